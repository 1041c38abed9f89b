"""Timing, byte and FLOP accounting of resnorm.bench, checked against arithmetic and against PyTorch's FLOP counter."""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from resnorm import bench  # noqa: E402


def test_do_bench_measures_a_known_duration():
    timing = bench.do_bench(lambda: time.sleep(0.002), device="cpu", warmup_ms=2, rep_ms=20)
    assert 2.0 <= timing.median_ms < 15.0
    assert timing.p20_ms <= timing.median_ms <= timing.p80_ms
    assert timing.reps >= 5
    assert "ms" in str(timing)


def test_do_bench_clears_grads_before_each_call():
    w = torch.ones(3, requires_grad=True)
    seen = []

    def step():
        seen.append(w.grad is None)
        (w * 2).sum().backward()

    bench.do_bench(step, device="cpu", warmup_ms=0, rep_ms=1, grad_to_none=[w])
    assert all(seen)


def test_do_bench_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rep_ms"):
        bench.do_bench(lambda: None, device="cpu", rep_ms=0)
    with pytest.raises(ValueError, match="min_reps"):
        bench.do_bench(lambda: None, device="cpu", min_reps=5, max_reps=2)


def test_quantile_interpolates():
    assert bench._quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert bench._quantile([0.0, 10.0], 0.2) == pytest.approx(2.0)


def test_gbps_and_copy_bandwidth():
    assert bench.gbps(2e9, 1000.0) == pytest.approx(2.0)  # 2 GB in one second
    with pytest.raises(ValueError):
        bench.gbps(1, 0.0)
    bw, timing = bench.copy_bandwidth("cpu", nbytes=4 * 1024**2, warmup_ms=1, rep_ms=5)
    # 8 MiB moved (read + write) in the measured time.
    assert bw == pytest.approx(2 * 4 * 1024**2 / (timing.median_ms * 1e-3) / 1e9)
    assert bw > 0


def test_layer_norm_bytes_by_hand():
    m, n = 1000, 256
    # forward, fp32: x and y (4 bytes each), weight and bias, mean and rstd per row.
    assert bench.layer_norm_bytes(m, n) == 2 * m * n * 4 + 2 * n * 4 + 8 * m
    # bf16 activations with float32 parameters.
    assert bench.layer_norm_bytes(m, n, torch.bfloat16, weight_dtype=torch.float32) == 2 * m * n * 2 + 2 * n * 4 + 8 * m
    # backward: x, dy, dx; read w; read stats; write dw, db.
    assert bench.layer_norm_bytes(m, n, direction="backward") == 3 * m * n * 4 + n * 4 + 8 * m + 2 * n * 4
    both = bench.layer_norm_bytes(m, n, direction="fwd+bwd")
    assert both == bench.layer_norm_bytes(m, n) + bench.layer_norm_bytes(m, n, direction="backward")
    assert bench.layer_norm_bytes(m, n, affine=False, stats=False) == 2 * m * n * 4
    with pytest.raises(ValueError, match="direction"):
        bench.layer_norm_bytes(m, n, direction="sideways")
    with pytest.raises(ValueError, match="positive"):
        bench.layer_norm_bytes(0, n)


def test_layer_norm_flops_and_intensity():
    assert bench.layer_norm_flops(10, 20) == 7 * 200
    assert bench.layer_norm_flops(10, 20, "fwd+bwd") == 19 * 200
    # A LayerNorm does about one FLOP per byte in fp32: far left of any GPU's ridge point.
    intensity = bench.layer_norm_flops(4096, 4096) / bench.layer_norm_bytes(4096, 4096)
    assert 0.5 < intensity < 1.5


def test_roofline_is_min_of_the_two_roofs():
    assert bench.attainable_tflops(1.0, 3000.0, 900.0) == pytest.approx(3.0)  # memory bound
    assert bench.attainable_tflops(1e4, 3000.0, 900.0) == 900.0  # compute bound
    fig, ax = plt.subplots()
    ridge = bench.roofline(ax, 3000.0, 900.0, [("a", 1.0, 2.0), ("a", 2.0, 4.0), ("b", 1.0, 1.0)])
    assert ridge == pytest.approx(300.0)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    plt.close(fig)
    with pytest.raises(ValueError, match="positive"):
        bench.roofline(plt.subplots()[1], 0.0, 1.0)


def test_encoder_decoder_flops_match_pytorch_flop_counter():
    """Our term-by-term formula against torch.utils.flop_counter on torch.nn.Transformer (math attention, so every product is a counted matmul)."""
    d, f, n_enc, n_dec, S, T, B, V = 32, 64, 2, 3, 7, 5, 3, 11
    torch.manual_seed(0)
    model = torch.nn.Transformer(d, 4, n_enc, n_dec, f, dropout=0.0, batch_first=True)
    head = torch.nn.Linear(d, V)
    src = torch.randn(B, S, d, requires_grad=True)  # as if from an embedding: input gradients are computed
    tgt = torch.randn(B, T, d, requires_grad=True)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(T)

    def forward():
        return head(model(src, tgt, tgt_mask=mask))

    expected = bench.encoder_decoder_flops(d_model=d, d_ff=f, n_encoder_layers=n_enc, n_decoder_layers=n_dec,
                                           src_len=S, tgt_len=T, batch_size=B, vocab_out=V)
    with sdpa_kernel(SDPBackend.MATH):
        with torch.no_grad():
            counted_fwd = bench.count_flops(forward)
        counted_train = bench.count_flops(lambda: forward().sum().backward())
    inference = bench.encoder_decoder_flops(d_model=d, d_ff=f, n_encoder_layers=n_enc, n_decoder_layers=n_dec,
                                            src_len=S, tgt_len=T, batch_size=B, vocab_out=V, training=False)
    assert counted_fwd == inference["total"]
    assert counted_train == expected["total"] == 3 * inference["total"]
    assert expected["total"] == expected["encoder"] + expected["decoder"] + expected["output"]
    with pytest.raises(ValueError, match="d_model"):
        bench.encoder_decoder_flops(d_model=0, d_ff=1, n_encoder_layers=1, n_decoder_layers=1, src_len=1, tgt_len=1, batch_size=1)


def test_decoder_flops_per_token_match_counter_and_nanogpt():
    d, f, L, T, B, V = 32, 128, 2, 16, 2, 50
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d, 4, f, dropout=0.0, batch_first=True)
    stack = torch.nn.TransformerEncoder(layer, L, enable_nested_tensor=False)
    head = torch.nn.Linear(d, V, bias=False)
    x = torch.randn(B, T, d, requires_grad=True)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(T)
    with sdpa_kernel(SDPBackend.MATH):
        counted = bench.count_flops(lambda: head(stack(x, mask=mask, is_causal=True)).sum().backward())
    # N counts the weights that multiply (biases add, LayerNorm scales): 12·L·d² for a
    # d_ff = 4d block (4d² attention + 8d² MLP) plus the output head.
    n_params = sum(p.numel() for name, p in stack.named_parameters() if name.endswith("weight") and p.dim() == 2)
    n_params += head.weight.numel()
    assert counted == bench.decoder_flops_per_token(n_params, L, d, T) * B * T
    # nanoGPT's Shakespeare config (6 layers, d=384, T=256, 10.65M parameters): about 71 MFLOP per token.
    assert bench.decoder_flops_per_token(10_650_000, 6, 384, 256) == pytest.approx(71.0e6, rel=0.01)


def test_mfu_tokens_and_peaks():
    # 1e12 FLOPs in 10 ms is 100 TFLOP/s: 10% of a 1000 TFLOP/s peak.
    assert bench.mfu(1e12, 10.0, 1000.0) == pytest.approx(0.10)
    assert bench.tokens_per_second(4096, 2.0) == pytest.approx(2_048_000)
    with pytest.raises(ValueError):
        bench.mfu(1.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        bench.tokens_per_second(1, -1.0)
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA H200") == 989.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_tflops("Tesla T4") == 65.0
    assert bench.peak_tflops("CPU (x86_64, 2 cores)") is None


def test_matmul_tflops_counts_2n_cubed():
    tflops, timing = bench.matmul_tflops("cpu", n=64, dtype=torch.float32, warmup_ms=1, rep_ms=5)
    assert tflops == pytest.approx(2 * 64**3 / (timing.median_ms * 1e-3) / 1e12)


def test_format_table_aligns_and_marks_missing():
    text = bench.format_table([{"a": 1.23456, "b": "x"}, {"a": 10.0}], floatfmt=".2f")
    lines = text.splitlines()
    assert lines[0].split() == ["a", "b"]
    assert lines[2].split() == ["1.23", "x"] and lines[3].split() == ["10.00", "-"]
    assert len({len(line) for line in lines}) == 1  # every line padded to the same width
    assert bench.format_table([]) == "(no rows)"


def test_interleaved_timing_takes_turns_and_measures_each():
    order = []

    def slow():
        order.append("slow")
        time.sleep(0.004)

    def fast():
        order.append("fast")
        time.sleep(0.001)

    timings = bench.do_bench_interleaved({"slow": slow, "fast": fast}, device="cpu", reps=4, warmup=1)
    assert order[2:] == ["slow", "fast"] * 4  # after one warm-up call each, strict turns
    assert timings["slow"].reps == timings["fast"].reps == 4
    assert timings["slow"].median_ms >= 4.0 and 1.0 <= timings["fast"].median_ms < timings["slow"].median_ms
    with pytest.raises(ValueError, match="at least one"):
        bench.do_bench_interleaved({}, device="cpu")


def test_interleaved_timing_can_flush_the_cache_before_each_call(monkeypatch):
    zeroed = []
    real_empty = torch.empty

    def tracking_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if args and args[0] == bench.L2_FLUSH_BYTES // 4:
            class Flush:
                def zero_(self):
                    zeroed.append(len(order))

            return Flush()
        return t

    order = []
    monkeypatch.setattr(bench.torch, "empty", tracking_empty)
    timings = bench.do_bench_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                         device="cpu", reps=3, warmup=0, flush_l2=True)
    assert timings["a"].reps == timings["b"].reps == 3
    assert zeroed == list(range(6))  # one flush before each of the 6 timed calls
    zeroed.clear()
    bench.do_bench_interleaved({"a": lambda: order.append("a")}, device="cpu", reps=2, warmup=0)
    assert zeroed == []  # no flush unless asked
