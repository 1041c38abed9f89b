import warnings

import matplotlib

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
