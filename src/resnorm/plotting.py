"""The book's one plot style. Every notebook calls :func:`use_style` once."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl

# Colour-blind-safe palette (Okabe & Ito), in a fixed order so that "plain" and
# "residual", "Post-LN" and "Pre-LN" keep their colours across chapters. Okabe & Ito's
# yellow (#F0E442) is left out: on a white page a thin yellow line is barely visible.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]

# The page's text column is 720 CSS px = 7.5 in wide at 1280 px (_static/resnorm.css), and a
# figure in a cell's output gets about 704 px of it. A figure drawn at most 7 in wide is shown at
# its drawn size or larger, so a font of 9 pt in the figure reads as 9 pt or more on the page; a
# wider figure is scaled down and its text shrinks with it. The site test
# (tests/site/test_site.py) measures this on every page: displayed width / drawn width x the
# smallest font >= 9 pt.
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
    # Every text size is given in points, none below MIN_FONT_PT (test_plotting checks this).
    "font.size": 10,
    "figure.titlesize": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
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


def font_sizes_pt() -> dict[str, float]:
    """The text sizes the style sets, in points (``legend.fontsize`` and friends)."""
    from matplotlib import font_manager

    base = float(STYLE["font.size"])
    sizes = {}
    for key, value in STYLE.items():
        if key.endswith(("size", "fontsize")) and key != "figure.figsize":
            sizes[key] = float(value) if not isinstance(value, str) else font_manager.font_scalings[value] * base
    return sizes


def smallest_font_pt() -> float:
    """The smallest text the style draws: its smallest size, or the provenance line's."""
    return min(MIN_FONT_PT, *font_sizes_pt().values())


def panels(nrows: int = 1, ncols: int = 1, panel_height: float = 2.6, **kwargs):
    """``plt.subplots`` at the column's width: ``nrows`` panels stacked, each ``panel_height`` in tall.

    Side-by-side panels (``ncols`` > 1) share the 7 in; for more than two, stack them instead,
    since each panel's tick labels keep their 9 pt whatever the panel's width.
    """
    import matplotlib.pyplot as plt

    if nrows < 1 or ncols < 1:
        raise ValueError(f"panels needs at least one row and one column, got nrows={nrows}, ncols={ncols}")
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=figsize(panel_height * nrows), **kwargs)


def legend_outside(ax_or_fig, where: str = "below", ncol: int | None = None):
    """A legend off the data: under the axes (``where="below"``, entries side by side) or right of them.

    Given a Figure, one legend for the labelled artists of all its axes (each label once), placed
    outside the axes by the constrained layout; given an Axes, ``"right"`` puts that axes' legend
    just right of it (each panel of a stack keeps its own), ``"below"`` a figure legend of its
    artists under the figure. The constrained layout is switched on if the figure has no layout
    engine yet (then do not call ``tight_layout``).
    """
    from matplotlib.figure import Figure

    if where not in ("below", "right"):
        raise ValueError(f"where must be 'below' or 'right', got {where!r}")
    fig = ax_or_fig if isinstance(ax_or_fig, Figure) else ax_or_fig.figure
    axes = fig.axes if isinstance(ax_or_fig, Figure) else [ax_or_fig]
    handles, labels = [], []
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if not handles:
        raise ValueError("no labelled artists: pass label=... to the plot calls first")
    if fig.get_layout_engine() is None:
        fig.set_layout_engine("constrained")
    if where == "right" and not isinstance(ax_or_fig, Figure):
        return ax_or_fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                                ncol=ncol or 1)
    if where == "below":
        return fig.legend(handles, labels, loc="outside lower center", ncol=ncol or min(len(labels), 3))
    return fig.legend(handles, labels, loc="outside right upper", ncol=ncol or 1)


def png_dpi(data: bytes) -> float | None:
    """The resolution a PNG was saved at (matplotlib writes it in the pHYs chunk), or None.

    A figure's drawn width in inches is its width in pixels over this; the site tests compare
    it with the width the page shows it at, to know how large its text appears.
    """
    import struct

    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    offset = 8
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        if kind == b"pHYs":
            per_metre, _, unit = struct.unpack(">IIB", data[offset + 8:offset + 17])
            return per_metre * 0.0254 if unit == 1 and per_metre else None
        if kind == b"IDAT":  # pHYs must come before the image data
            return None
        offset += 12 + length
    return None


def provenance() -> str:
    """Where a figure's data came from: mode and hardware, for captions and figure footers."""
    from . import runtime

    return f"{runtime.mode()} mode, {runtime.device_name()}"


def stamp_figure(fig, text: str | None = None) -> None:
    """Write the mode and hardware (and optionally what data) in the figure's lower right corner."""
    label = provenance() if text is None else f"{text} | {provenance()}"
    # Hang the line just below the figure's bottom edge: the notebooks save figures with a tight
    # bounding box, which grows to include it, so it never sits on top of the x-axis labels.
    # wrap=True breaks a long line at the figure's width instead of widening the saved figure
    # (a wider figure is shown scaled down, and its text with it).
    fig.text(0.995, 0.0, label, ha="right", va="top", fontsize=MIN_FONT_PT, color="0.35", wrap=True)


def color(name: str) -> str:
    """Fixed colours for the comparisons that recur through the book ("reference" is black)."""
    roles = {
        "plain": PALETTE[1],
        "residual": PALETTE[0],
        "post_ln": PALETTE[1],
        "pre_ln": PALETTE[0],
        "reference": PALETTE[6],
        "ours": PALETTE[2],
    }
    return roles[name]
