import warnings

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from resnorm import plotting  # noqa: E402


def test_use_style_renders_chinese_without_missing_glyphs():
    plotting.use_style()
    fig, ax = plt.subplots()
    ax.set_title("三分之二 → two thirds; 我 爱 中国; 二〇二六年十一月二十二日")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.canvas.draw()
    plt.close(fig)
    missing = [str(w.message) for w in caught if "missing from" in str(w.message)]
    assert not missing, missing


def test_figures_state_their_provenance(monkeypatch):
    monkeypatch.setenv("RESNORM_MODE", "quick")
    plotting.use_style()
    fig, _ = plt.subplots()
    plotting.stamp_figure(fig, "data: digits")
    texts = [t.get_text() for t in fig.texts]
    plt.close(fig)
    assert any(t.startswith("data: digits | quick mode, ") for t in texts), texts


# --------------------------------------------------------------------------- figures readable on the page
# The page shows a figure at most about 7.3 in wide (704 CSS px of the 720 px column at 1280 px,
# _static/resnorm.css); drawn wider, it is scaled down and its 9 pt text with it.
PAGE_FIGURE_WIDTH_IN = 704 / 96


def _png_size_and_dpi(data: bytes) -> tuple[int, int, float]:
    """(width px, height px, dpi) of a PNG, the dpi read from its pHYs chunk (which matplotlib writes)."""
    import struct

    width, height = struct.unpack(">II", data[16:24])
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        if kind == b"pHYs":
            per_metre, _, unit = struct.unpack(">IIB", data[offset + 8:offset + 17])
            assert unit == 1, "pHYs unit should be the metre"
            return width, height, per_metre * 0.0254
        if kind == b"IDAT":
            break
        offset += 12 + length
    raise AssertionError("the PNG has no pHYs chunk: its dpi is unknown")


def _saved_png(fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # the style's savefig settings: 150 dpi, tight bounding box
    plt.close(fig)
    return buffer.getvalue()


def test_style_sets_no_text_below_the_minimum():
    sizes = plotting.font_sizes_pt()
    assert {"legend.fontsize", "xtick.labelsize", "ytick.labelsize", "axes.titlesize"} <= set(sizes)
    small = {k: v for k, v in sizes.items() if v < plotting.MIN_FONT_PT}
    assert not small, f"text sizes below {plotting.MIN_FONT_PT} pt in plotting.STYLE: {small}"
    assert plotting.smallest_font_pt() == plotting.MIN_FONT_PT == 9


def test_palette_is_visible_on_white():
    """WCAG contrast against white of at least 2:1; Okabe & Ito's yellow (#F0E442) has 1.2:1."""
    from matplotlib.colors import to_rgb

    def luminance(colour):
        channels = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(colour)]
        return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]

    faint = {c: round(1.05 / (luminance(c) + 0.05), 2) for c in plotting.PALETTE if 1.05 / (luminance(c) + 0.05) < 2.0}
    assert not faint, f"colours too faint on a white page (contrast ratio): {faint}"
    assert luminance("#F0E442") > 0.5  # the check would catch the yellow


def test_every_colour_role_is_in_the_palette():
    for role in ("plain", "residual", "post_ln", "pre_ln", "reference", "ours"):
        assert plotting.color(role) in plotting.PALETTE, role


def test_figsize_is_the_column_width_and_refuses_wider():
    assert plotting.figsize(3.0) == (plotting.COLUMN_WIDTH_IN, 3.0)
    with pytest.raises(ValueError, match="exceeds the page column"):
        plotting.figsize(3.0, width=9.6)
    with pytest.raises(ValueError):
        plotting.figsize(0)


def test_stacked_panels_are_saved_at_150_dpi_within_the_page_width(monkeypatch):
    monkeypatch.setenv("RESNORM_MODE", "quick")
    plotting.use_style()
    fig, axes = plotting.panels(2, panel_height=2.0)
    for ax in axes:
        ax.plot([1, 10, 100], [3, 2, 1], label="a curve with a fairly long label")
        ax.set(xlabel="x label (units)", ylabel="y label (units)", title="a panel")
    plotting.legend_outside(fig)
    plotting.stamp_figure(fig, "data: " + "a long description of the data, " * 6)  # wraps, does not widen
    width, height, dpi = _png_size_and_dpi(_saved_png(fig))
    assert round(dpi) == 150
    assert plotting.COLUMN_WIDTH_IN - 0.5 < width / dpi <= PAGE_FIGURE_WIDTH_IN, width / dpi
    assert height / dpi > 4.0  # two stacked 2 in panels


def test_wider_figures_are_caught_by_their_png():
    """What the site test reads: a 9.6 in figure's PNG says so, and would be shown at 0.76x."""
    plotting.use_style()
    fig, ax = plt.subplots(figsize=(9.6, 3.0))
    ax.plot([0, 1], [0, 1])
    width, _, dpi = _png_size_and_dpi(_saved_png(fig))
    assert width / dpi > PAGE_FIGURE_WIDTH_IN


def test_legend_outside_keeps_the_legend_off_the_data():
    plotting.use_style()
    fig, ax = plotting.panels(1)
    for k in range(4):
        ax.plot(range(10), [k * x for x in range(10)], label=f"slope {k}")
    for where in ("below", "right"):
        legend = plotting.legend_outside(ax, where)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legend_box, axes_box = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert not legend_box.overlaps(axes_box), (where, legend_box, axes_box)
        legend.remove()
    with pytest.raises(ValueError, match="no labelled artists"):
        plotting.legend_outside(plt.subplots()[1])
    plt.close("all")


def test_png_dpi_reads_what_matplotlib_wrote(tmp_path):
    fig, _ = plt.subplots(figsize=(2, 1))
    path = tmp_path / "f.png"
    fig.savefig(path, dpi=150)
    plt.close(fig)
    assert plotting.png_dpi(path.read_bytes()) == pytest.approx(150, abs=0.1)
    assert plotting.png_dpi(b"not a png") is None
