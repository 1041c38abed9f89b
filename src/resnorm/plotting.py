"""The book's one plot style. Every notebook calls :func:`use_style` once."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl

# Colour-blind-safe palette (Okabe & Ito), in a fixed order so that "plain" and
# "residual", "Post-LN" and "Pre-LN" keep their colours across chapters. Okabe & Ito's
# yellow (#F0E442) is left out: on a white page a thin yellow line is barely visible.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]

# The page's text column is about 688 CSS px = 7.2 in wide at 1280 px. A figure drawn at most
# this wide is shown at (nearly) its drawn size, so a font of 9 pt in the figure reads as 9 pt
# on the page; a wider figure is scaled down and its text shrinks with it.
COLUMN_WIDTH_IN = 7.0
MIN_FONT_PT = 9.0

STYLE = {
    "figure.figsize": (COLUMN_WIDTH_IN, 3.6),
    "figure.dpi": 150,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "lines.linewidth": 1.6,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "image.cmap": "viridis",
}

# Fonts that can show the Chinese examples (我 爱 中国, 三分之二); matplotlib falls
# back along this list, and DejaVu Sans keeps Latin text working everywhere.
CJK_FONTS = ["Noto Sans CJK SC", "Noto Sans SC", "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei", "PingFang SC"]


FONT_DIR = Path(__file__).parent / "fonts"


def _register_shipped_fonts() -> list[str]:
    """Register fonts shipped in ``resnorm/fonts`` (a small CJK subset for the Chinese examples)."""
    from matplotlib import font_manager

    names = []
    for path in sorted(FONT_DIR.glob("*.[ot]tf")):
        font_manager.fontManager.addfont(str(path))
        names.append(font_manager.FontProperties(fname=str(path)).get_name())
    return names


def use_style() -> None:
    """Apply the book's style to matplotlib (idempotent)."""
    mpl.rcParams.update(STYLE)
    shipped = _register_shipped_fonts()
    mpl.rcParams["font.sans-serif"] = ["DejaVu Sans", *shipped, *CJK_FONTS]
    # matplotlib falls back glyph by glyph only along font.family, not along font.sans-serif:
    # list the shipped CJK subset there so that 三分之二 renders next to Latin text.
    mpl.rcParams["font.family"] = ["sans-serif", *shipped]


def figsize(height: float = 3.6, width: float = COLUMN_WIDTH_IN) -> tuple[float, float]:
    """``(width, height)`` in inches for ``plt.subplots(figsize=...)``: the column's width by default.

    Wider than :data:`COLUMN_WIDTH_IN` is refused: the page would shrink the figure and its text
    below the 9 pt the style sets. For several panels, stack them or share the column's width.
    """
    if width > COLUMN_WIDTH_IN + 1e-9:
        raise ValueError(f"figure width {width} in exceeds the page column ({COLUMN_WIDTH_IN} in); "
                         "stack the panels instead of widening the figure")
    if height <= 0 or width <= 0:
        raise ValueError(f"figure size must be positive, got width={width}, height={height}")
    return (width, height)


def provenance() -> str:
    """Where a figure's data came from: mode and hardware, for captions and figure footers."""
    from . import runtime

    return f"{runtime.mode()} mode, {runtime.device_name()}"


def stamp_figure(fig, text: str | None = None) -> None:
    """Write the mode and hardware (and optionally what data) in the figure's lower right corner."""
    label = provenance() if text is None else f"{text} | {provenance()}"
    # Hang the line just below the figure's bottom edge: the notebooks save figures with a tight
    # bounding box, which grows to include it, so it never sits on top of the x-axis labels.
    fig.text(0.995, 0.0, label, ha="right", va="top", fontsize=MIN_FONT_PT, color="0.35")


def color(name: str) -> str:
    """Fixed colours for the comparisons that recur through the book."""
    roles = {
        "plain": PALETTE[1],
        "residual": PALETTE[0],
        "post_ln": PALETTE[1],
        "pre_ln": PALETTE[0],
        "reference": PALETTE[6],
        "ours": PALETTE[2],
    }
    return roles[name]
