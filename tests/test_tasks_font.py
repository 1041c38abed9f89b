"""The shipped CJK subset font: licence, size, coverage of the task's characters, rendering."""

import warnings

import pytest

from resnorm import plotting
from resnorm.tasks import zh_numbers as zh

FONT = plotting.FONT_DIR / "NotoSansCJKsc-resnorm-subset.ttf"
NEEDED = zh.ZH_ALPHABET + "个我爱中国，。、：（）《》"


def test_font_is_small_and_licensed():
    assert FONT.is_file() and FONT.stat().st_size < 200_000
    licence = (plotting.FONT_DIR / "OFL-NotoSansCJK.txt").read_text(encoding="utf-8")
    assert "SIL OPEN FONT LICENSE Version 1.1" in licence and "Reserved Font Name 'Source'" in licence


def test_font_covers_every_character_of_the_task():
    from matplotlib.ft2font import FT2Font

    font = FT2Font(str(FONT))
    assert font.family_name == "Noto Sans CJK SC resnorm subset"  # never shadows a full Noto install
    charmap = font.get_charmap()
    assert not [c for c in NEEDED if ord(c) not in charmap]


def test_chinese_renders_without_missing_glyphs(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotting.use_style()
    shipped = plotting._register_shipped_fonts()
    assert "Noto Sans CJK SC resnorm subset" in shipped
    with matplotlib.rc_context({"font.family": ["sans-serif", *shipped]}), warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)"
        fig, ax = plt.subplots()
        ax.set_xticks(range(4), list("三分之二"))
        ax.set_title("我 爱 中国：二〇二六年十一月二十二日 → two thirds")
        fig.savefig(tmp_path / "cjk.png")
        plt.close(fig)
    with matplotlib.rc_context({"font.family": ["DejaVu Sans"]}), pytest.warns(UserWarning, match="missing"):
        fig, ax = plt.subplots()
        ax.set_title("三分之二")  # the check above can fail: without the subset, glyphs are missing
        fig.savefig(tmp_path / "latin_only.png")
        plt.close(fig)
