"""Draw the two diagrams of the Transformer chapter (book/transformer.ipynb) as SVG files.

    python book/images/transformer-diagrams.py

writes, next to this script:

- ``transformer-post-pre-ln.svg``: one sub-layer in its Post-LN and Pre-LN forms (where the
  LayerNorm, the residual add and dropout sit);
- ``transformer-encoder-decoder.svg``: the Pre-LN encoder-decoder with every LayerNorm and
  every residual connection, including the two final LayerNorms.

They are drawn with matplotlib at the page column's width (resnorm.plotting.COLUMN_WIDTH_IN),
with text kept as text (``svg.fonttype: none``) at 9 pt or more, so that the site test can read
the font sizes and the page shows them at >= 9 pt. The committed SVGs are this script's output;
rerun it after changing it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch  # noqa: E402

from resnorm import plotting  # noqa: E402

HERE = Path(__file__).resolve().parent
WIDTH = plotting.COLUMN_WIDTH_IN
TEXT_PT = 10  # box labels; notes use plotting.MIN_FONT_PT

# Fill colours, light tints of the book's palette so that black text stays readable.
NORM_FILL = "#f6d5bf"  # LayerNorm: a tint of the orange of Post-LN
SUBLAYER_FILL = "#cfe3f2"  # attention and feed-forward: a tint of the blue of Pre-LN
DROPOUT_FILL = "#e6e6e6"
OTHER_FILL = "#ffffff"
RESIDUAL_COLOR = plotting.PALETTE[2]  # the residual path, in green throughout
FLOW_COLOR = "0.15"


def _canvas(height: float):
    fig = plt.figure(figsize=(WIDTH, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _box(ax, x: float, y: float, w: float, h: float, text: str, fill: str, bold: bool = False,
         size: float = TEXT_PT) -> tuple[float, float, float, float]:
    """A rounded box centred at (x, y); returns its (left, bottom, right, top)."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.06",
                                facecolor=fill, edgecolor="0.25", linewidth=1.0))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, fontweight="bold" if bold else "normal")
    return (x - w / 2, y - h / 2, x + w / 2, y + h / 2)


def _arrow(ax, start, end, color=FLOW_COLOR, width=1.2):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color=color, linewidth=width,
                                 shrinkA=0, shrinkB=0))


def _line(ax, points, color=RESIDUAL_COLOR, width=1.8):
    xs, ys = zip(*points)
    ax.plot(xs, ys, color=color, linewidth=width, solid_capstyle="round")


def _add(ax, x: float, y: float, r: float = 0.11):
    ax.add_patch(Circle((x, y), r, facecolor="white", edgecolor="0.2", linewidth=1.2, zorder=3))
    ax.text(x, y, "+", ha="center", va="center", fontsize=TEXT_PT + 1, zorder=4)


def _sublayer_column(ax, x: float, y0: float, pre_ln: bool, title: str, formula: str, note: str) -> None:
    """One sub-layer, drawn bottom to top, with its residual path on the left."""
    w, skip_x = 1.9, x - 1.25
    ax.text(x, y0 - 0.05, "x  (the residual stream)", ha="center", va="top", fontsize=TEXT_PT)
    ax.text(x - 0.2, y0 - 0.35, note, ha="center", va="top", fontsize=plotting.MIN_FONT_PT, color="0.3")
    names = (["LayerNorm", "sub-layer F\n(attention or FFN)", "Dropout"] if pre_ln
             else ["sub-layer F\n(attention or FFN)", "Dropout"])
    fills = {"LayerNorm": NORM_FILL, "Dropout": DROPOUT_FILL}
    y, previous_top = y0 + 0.45, y0
    fork_y = y0 + 0.22
    _line(ax, [(x, y0), (x, fork_y)], color=FLOW_COLOR, width=1.2)
    for name in names:
        h = 0.55 if "\n" in name else 0.36
        _arrow(ax, (x, max(previous_top, fork_y)), (x, y))
        _, _, _, top = _box(ax, x, y + h / 2, w, h, name, fills.get(name, SUBLAYER_FILL))
        previous_top, y = top, top + 0.22
    add_y = y + 0.1
    _arrow(ax, (x, previous_top), (x, add_y - 0.11))
    _add(ax, x, add_y)
    # the residual connection: from the fork below the branch to the add
    _line(ax, [(x, fork_y), (skip_x, fork_y), (skip_x, add_y), (x - 0.11, add_y)])
    ax.text(skip_x - 0.08, (fork_y + add_y) / 2, "residual\nconnection", ha="right", va="center",
            fontsize=plotting.MIN_FONT_PT, color=RESIDUAL_COLOR)
    top = add_y + 0.11
    if not pre_ln:
        _arrow(ax, (x, top), (x, top + 0.22))
        _, _, _, top = _box(ax, x, top + 0.22 + 0.18, w, 0.36, "LayerNorm", NORM_FILL)
    _arrow(ax, (x, top), (x, top + 0.3))
    ax.text(x - 0.2, top + 0.35, formula, ha="center", va="bottom", fontsize=TEXT_PT)
    ax.text(x - 0.2, top + 0.7, title, ha="center", va="bottom", fontsize=TEXT_PT + 1, fontweight="bold")


def draw_post_pre_ln(path: Path) -> None:
    height = 4.65
    fig, ax = _canvas(height)
    _sublayer_column(ax, 2.15, 0.8, pre_ln=False, title="Post-LN (the 2017 paper)",
                     formula="x ← LayerNorm(x + Dropout(F(x)))",
                     note="every sub-layer's output is normalized")
    _sublayer_column(ax, 5.65, 0.8, pre_ln=True, title="Pre-LN",
                     formula="x ← x + Dropout(F(LayerNorm(x)))",
                     note="x itself is never normalized:\na final LayerNorm ends the stack")
    ax.plot([3.62, 3.62], [0.2, height - 0.2], color="0.8", linewidth=1.0)
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def _layer_block(ax, x: float, y: float, sublayers: list[str], w: float = 2.0) -> tuple[float, dict]:
    """A Pre-LN layer's sub-layers from y upwards; returns the top of the last add and the
    height of each sub-layer's box centre."""
    skip_x = x - w / 2 - 0.18
    centres = {}
    for name in sublayers:
        fork_y = y + 0.12
        _line(ax, [(x, y), (x, fork_y)], color=FLOW_COLOR, width=1.2)
        _arrow(ax, (x, fork_y), (x, fork_y + 0.14))
        _, _, _, top = _box(ax, x, fork_y + 0.14 + 0.15, w * 0.7, 0.3, "LayerNorm", NORM_FILL, size=plotting.MIN_FONT_PT)
        _arrow(ax, (x, top), (x, top + 0.14))
        centres[name] = top + 0.14 + 0.19
        _, _, _, top = _box(ax, x, centres[name], w, 0.38, name, SUBLAYER_FILL)
        add_y = top + 0.28
        _arrow(ax, (x, top), (x, add_y - 0.11))
        _add(ax, x, add_y)
        _line(ax, [(x, fork_y), (skip_x, fork_y), (skip_x, add_y), (x - 0.11, add_y)])
        y = add_y + 0.11
    return y, centres


def draw_encoder_decoder(path: Path) -> None:
    height = 8.2
    fig, ax = _canvas(height)
    enc_x, dec_x, w = 1.75, 5.25, 2.1

    def stack(x, tokens, sublayers, label):
        ax.text(x, 0.2, tokens, ha="center", va="bottom", fontsize=TEXT_PT)
        _arrow(ax, (x, 0.45), (x, 0.62))
        _, _, _, top = _box(ax, x, 0.62 + 0.28, w + 0.3, 0.56, "embedding × √d_model\n+ positions, Dropout",
                            OTHER_FILL)
        _arrow(ax, (x, top), (x, top + 0.3))
        block_bottom = top + 0.3
        block_top, centres = _layer_block(ax, x, block_bottom + 0.1, sublayers, w)
        ax.add_patch(FancyBboxPatch((x - w / 2 - 0.5, block_bottom), w + 0.85, block_top - block_bottom + 0.12,
                                    boxstyle="round,pad=0,rounding_size=0.1", facecolor="none", edgecolor="0.5",
                                    linewidth=1.0, linestyle=(0, (4, 3))))
        ax.text(x + w / 2 + 0.27, block_bottom + 0.08, label, ha="right", va="bottom",
                fontsize=plotting.MIN_FONT_PT, color="0.3")
        top = block_top + 0.12
        _arrow(ax, (x, top), (x, top + 0.22))
        _, _, _, top = _box(ax, x, top + 0.22 + 0.18, w, 0.36, "final LayerNorm", NORM_FILL, bold=True)
        return top, centres

    enc_top, _ = stack(enc_x, "source tokens", ["self-attention", "feed-forward (FFN)"], "N encoder layers")
    dec_top, dec_centres = stack(dec_x, "target tokens, shifted right",
                                 ["masked self-attention", "cross-attention", "feed-forward (FFN)"],
                                 "N decoder layers")
    # memory: the encoder's normalized output feeds every decoder layer's cross-attention
    memory_y = enc_top + 0.35
    _line(ax, [(enc_x, enc_top), (enc_x, memory_y), (3.55, memory_y)], color=FLOW_COLOR, width=1.2)
    cross_y = dec_centres["cross-attention"]
    _line(ax, [(3.55, memory_y), (3.55, cross_y)], color=FLOW_COLOR, width=1.2)
    _arrow(ax, (3.55, cross_y), (dec_x - w / 2, cross_y))
    ax.text(3.45, memory_y + 0.08, "memory\n(keys, values)", ha="right", va="bottom", fontsize=plotting.MIN_FONT_PT)
    _arrow(ax, (dec_x, dec_top), (dec_x, dec_top + 0.22))
    _, _, _, top = _box(ax, dec_x, dec_top + 0.22 + 0.18, w, 0.36, "Linear, softmax", OTHER_FILL)
    _arrow(ax, (dec_x, top), (dec_x, top + 0.25))
    ax.text(dec_x, top + 0.28, "next-token probabilities", ha="center", va="bottom", fontsize=TEXT_PT)
    # key
    key_y = height - 0.3
    ax.text(0.2, key_y, "Pre-LN encoder–decoder.", ha="left", va="top", fontsize=TEXT_PT, fontweight="bold")
    ax.text(0.2, key_y - 0.3, "LayerNorm in orange, residual connections in green;\n"
            "dropout after each sub-layer and on the embeddings.", ha="left", va="top", fontsize=plotting.MIN_FONT_PT)
    ax.text(0.2, key_y - 1.0, "Post-LN (2017): each LayerNorm sits after its\nresidual add (+) instead, "
            "and the two final\nLayerNorms are absent.", ha="left", va="top", fontsize=plotting.MIN_FONT_PT,
            color="0.25")
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def main() -> None:
    plotting.use_style()
    # text as SVG text (readable, searchable; the site test reads its sizes), the exact
    # figure size (no tight bounding box), and no date: rerunning changes nothing
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "resnorm", "savefig.bbox": "standard",
                         "font.family": ["DejaVu Sans"]})
    draw_post_pre_ln(HERE / "transformer-post-pre-ln.svg")
    draw_encoder_decoder(HERE / "transformer-encoder-decoder.svg")


if __name__ == "__main__":
    main()
