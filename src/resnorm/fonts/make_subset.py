"""Rebuild NotoSansCJKsc-resnorm-subset.ttf (a developer tool; not imported by the package).

Subsets Noto Sans CJK SC to the characters the book's figures use and converts its CFF outlines
to TrueType, so that matplotlib can also embed it in PDF and PostScript. Needs the Debian package
fonts-noto-cjk and fontTools (``pip install fonttools``)::

    python src/resnorm/fonts/make_subset.py src/resnorm/fonts/NotoSansCJKsc-resnorm-subset.ttf
"""
import sys
from pathlib import Path
from fontTools import subset
from fontTools.ttLib import TTFont, newTable
from fontTools.pens.cu2quPen import Cu2QuPen
from fontTools.pens.ttGlyphPen import TTGlyphPen

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from resnorm.tasks.zh_numbers import ZH_ALPHABET  # noqa: E402

TEXT = ZH_ALPHABET + "个我爱中国" + "，。、；：？！“”‘’（）《》【】—…·"
SRC = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
FAMILY = "Noto Sans CJK SC resnorm subset"
PS = "NotoSansCJKSC-resnorm-subset"

opts = subset.Options()
opts.font_number = 2  # the .ttc's faces: 0 JP, 1 KR, 2 SC, 3 TC, 4 HK
opts.layout_features = []
opts.hinting = False
opts.desubroutinize = True
opts.name_IDs = ["*"]
opts.notdef_outline = True
font = subset.load_font(SRC, opts)
assert "SC" in font["name"].getDebugName(4), font["name"].getDebugName(4)
sub = subset.Subsetter(opts)
sub.populate(text=TEXT)
sub.subset(font)

# CFF -> glyf, so that matplotlib can embed the font in PDF/PS as Type 42 as well as draw PNGs.
order = font.getGlyphOrder()
gs = font.getGlyphSet()
glyf = newTable("glyf"); glyf.glyphs = {}; glyf.glyphOrder = order
for name in order:
    pen = TTGlyphPen(gs)
    gs[name].draw(Cu2QuPen(pen, max_err=1.0, reverse_direction=True))
    glyf[name] = pen.glyph()
for name in order:
    glyf[name].recalcBounds(glyf)
font["glyf"] = glyf
font["loca"] = newTable("loca")
del font["CFF "]
if "VORG" in font: del font["VORG"]
font["maxp"] = maxp = newTable("maxp"); maxp.tableVersion = 0x00010000
for attr in ("maxZones", "maxTwilightPoints", "maxStorage", "maxFunctionDefs", "maxInstructionDefs",
             "maxStackElements", "maxSizeOfInstructions", "maxComponentElements", "maxPoints",
             "maxContours", "maxCompositePoints", "maxCompositeContours", "maxComponentDepth"):
    setattr(maxp, attr, 0)
maxp.maxZones = 1; maxp.numGlyphs = len(order)
font["head"].indexToLocFormat = 0; font["head"].glyphDataFormat = 0
font["post"].formatType = 3.0  # no glyph names needed
font.sfntVersion = "\x00\x01\x00\x00"

# A new family name, so that the subset never shadows a full Noto Sans CJK SC a reader has installed.
name = font["name"]
for rec in list(name.names):
    if rec.nameID in (1, 3, 4, 6, 16, 17, 18, 21, 22):
        name.removeNames(nameID=rec.nameID)
name.setName(FAMILY, 1, 3, 1, 0x409); name.setName("Regular", 2, 3, 1, 0x409)
name.setName(f"{PS};subset for the resnorm book", 3, 3, 1, 0x409)
name.setName(FAMILY, 4, 3, 1, 0x409); name.setName(PS, 6, 3, 1, 0x409)
name.setName("Subset of Noto Sans CJK SC (SIL Open Font License 1.1) with the characters used in the "
             "resnorm book's figures; outlines converted from CFF to TrueType.", 10, 3, 1, 0x409)
font.save(sys.argv[1])
f = TTFont(sys.argv[1])
cmap = f.getBestCmap()
missing = [c for c in TEXT if ord(c) not in cmap]
print("glyphs", len(f.getGlyphOrder()), "missing", missing, "name", f["name"].getDebugName(4))
