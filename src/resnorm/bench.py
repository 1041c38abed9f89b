"""Measuring speed honestly: timers, bytes that must move, bandwidth, FLOPs, MFU and the roofline.

Three rules, each a pitfall avoided:

1. **Time on the device, not on the host.** GPU work is asynchronous: a Python timer around
   a kernel launch measures the launch. :func:`do_bench` records CUDA events around each
   repetition and reads them after one synchronisation (on a CPU it uses ``perf_counter``).
2. **Start every repetition from a cold cache.** A tensor smaller than the GPU's L2 cache
   (50 MB on an H100) can be read from L2 on the second call, far faster than from memory.
   Before each repetition :func:`do_bench` overwrites a 256 MB buffer, as
   ``triton.testing.do_bench`` does, so every repetition reads its inputs from memory.
3. **Compare with the machine measured in the same run.** Achieved bandwidth is the bytes an
   operation *must* move (:func:`layer_norm_bytes`: read the input once, write the output once)
   divided by its time, next to the bandwidth of a plain device-to-device copy measured by
   :func:`copy_bandwidth` in the same process, not next to a datasheet number.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Sequence

import torch

L2_FLUSH_BYTES = 256 * 1024**2  # as triton.testing.do_bench: larger than any GPU's L2 today

# Dense (not 2:4-sparse) bfloat16/float16 tensor-core peaks from the vendors' datasheets, in
# TFLOP/s, for MFU. The T4 has no fast bfloat16; its entry is its float16 peak.
PEAK_TFLOPS_BF16 = {
    "H200": 989.0,  # NVIDIA H200 datasheet (SXM), same tensor cores as the H100 SXM
    "H100 SXM": 989.0,  # NVIDIA H100 datasheet: 1,979 TFLOPS "with sparsity"
    "H100 80GB HBM3": 989.0,  # how torch names the H100 SXM
    "H100 PCIe": 756.0,
    "A100": 312.0,  # NVIDIA A100 datasheet; nanoGPT's estimate_mfu uses this number
    "L4": 121.0,
    "T4": 65.0,  # float16
}


def peak_tflops(device_name: str) -> float | None:
    """The datasheet dense bf16 (fp16 on a T4) tensor-core peak for a GPU name, or None if unknown."""
    for key in sorted(PEAK_TFLOPS_BF16, key=len, reverse=True):  # most specific name first
        if all(part in device_name for part in key.split()):
            return PEAK_TFLOPS_BF16[key]
    return None


# --------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class Timing:
    """Milliseconds per call: the median and the 20th and 80th percentiles over ``reps`` repetitions."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int

    def __str__(self) -> str:
        return f"{self.median_ms:.4g} ms (p20 {self.p20_ms:.4g}, p80 {self.p80_ms:.4g}, {self.reps} reps)"


def _device_of(device) -> torch.device:
    if device is None:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def synchronize(device=None) -> None:
    """Wait for the device to finish its queued work (a no-op on the CPU)."""
    dev = _device_of(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def do_bench(
    fn: Callable[[], object],
    *,
    device=None,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    min_reps: int = 5,
    max_reps: int = 10_000,
    flush_l2: bool | None = None,
    grad_to_none: Sequence[torch.Tensor] = (),
) -> Timing:
    """Time ``fn()`` on ``device``: warm up for ``warmup_ms``, then repeat for about ``rep_ms``.

    The design of ``triton.testing.do_bench``: estimate the time of one call, derive the
    number of warmup calls and repetitions from it, flush the L2 cache before every
    repetition (default: on CUDA only), time each repetition with its own pair of CUDA
    events, and report the median. Tensors in ``grad_to_none`` get ``.grad = None`` before
    each call, so that timing a backward pass does not also time gradient accumulation.
    """
    if warmup_ms < 0 or rep_ms <= 0 or min_reps < 1 or max_reps < min_reps:
        raise ValueError(
            f"need warmup_ms >= 0, rep_ms > 0 and 1 <= min_reps <= max_reps; got {warmup_ms}, {rep_ms}, {min_reps}, {max_reps}"
        )
    dev = _device_of(device)
    cuda = dev.type == "cuda"
    if flush_l2 is None:
        flush_l2 = cuda
    cache = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=dev) if flush_l2 else None

    def run_once():
        for t in grad_to_none:
            t.grad = None
        fn()

    # Estimate one call (after a first call that may compile or autotune).
    run_once()
    synchronize(dev)
    n_est = 5
    t0 = time.perf_counter()
    for _ in range(n_est):
        if cache is not None:
            cache.zero_()
        run_once()
    synchronize(dev)
    estimate_ms = max((time.perf_counter() - t0) * 1e3 / n_est, 1e-4)
    n_warmup = max(1, int(warmup_ms / estimate_ms))
    n_rep = max(min_reps, min(max_reps, int(rep_ms / estimate_ms)))

    for _ in range(n_warmup):
        run_once()
    times_ms: list[float] = []
    if cuda:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        for i in range(n_rep):
            if cache is not None:
                cache.zero_()
            for t in grad_to_none:
                t.grad = None
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize(dev)
        times_ms = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        for _ in range(n_rep):
            if cache is not None:
                cache.zero_()
            for t in grad_to_none:
                t.grad = None
            synchronize(dev)
            t0 = time.perf_counter()
            fn()
            synchronize(dev)
            times_ms.append((time.perf_counter() - t0) * 1e3)
    return Timing(
        median_ms=statistics.median(times_ms),
        p20_ms=_quantile(times_ms, 0.2),
        p80_ms=_quantile(times_ms, 0.8),
        reps=len(times_ms),
    )


def do_bench_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    device=None,
    reps: int = 10,
    warmup: int = 2,
    flush_l2: bool = False,
) -> dict[str, Timing]:
    """Time several functions by turns, ``A B A B ...``, and return each one's :class:`Timing`.

    When two implementations are compared, taking turns exposes both to the same conditions
    (clock boosts, thermal state, other work on a shared machine), which timing them one after
    the other does not. Each call is timed on its own (CUDA events on a GPU, ``perf_counter``
    after a synchronisation elsewhere). By default no cache flush, as for whole training steps;
    ``flush_l2=True`` overwrites a 256 MB buffer before every timed call, as :func:`do_bench`
    does, for kernels whose inputs would otherwise stay in the L2 cache.
    """
    if not fns:
        raise ValueError("fns must name at least one function")
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    dev = _device_of(device)
    cache = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=dev) if flush_l2 else None
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(dev)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if cache is not None:
                cache.zero_()
            if dev.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end))
            else:
                synchronize(dev)
                t0 = time.perf_counter()
                fn()
                synchronize(dev)
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {
        name: Timing(statistics.median(v), _quantile(v, 0.2), _quantile(v, 0.8), len(v)) for name, v in times.items()
    }


# --------------------------------------------------------------------------- bandwidth


def gbps(nbytes: float, ms: float) -> float:
    """Bytes per millisecond expressed in GB/s (10⁹ bytes per second)."""
    if ms <= 0:
        raise ValueError(f"time must be positive, got {ms} ms")
    return nbytes / (ms * 1e-3) / 1e9


def copy_bandwidth(device=None, nbytes: int | None = None, **bench_kwargs) -> tuple[float, Timing]:
    """GB/s of a device-to-device copy of ``nbytes`` (read ``nbytes`` + write ``nbytes``).

    The default size, 1 GiB on a GPU, is 20 times an H100's L2 cache, so the copy runs from
    memory; 64 MiB on a CPU. This is the practical ceiling for any memory-bound kernel.
    """
    dev = _device_of(device)
    if nbytes is None:
        nbytes = 1024**3 if dev.type == "cuda" else 64 * 1024**2
    if nbytes < 4:
        raise ValueError(f"nbytes must be at least 4, got {nbytes}")
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    bench_kwargs.setdefault("flush_l2", False)  # the buffers are far larger than the cache
    timing = do_bench(lambda: dst.copy_(src), device=dev, **bench_kwargs)
    return gbps(2 * src.numel() * src.element_size(), timing.median_ms), timing


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def layer_norm_bytes(
    m: int,
    n: int,
    dtype: torch.dtype = torch.float32,
    direction: str = "forward",
    weight_dtype: torch.dtype | None = None,
    affine: bool = True,
    stats: bool = True,
) -> int:
    """The bytes a LayerNorm over ``m`` rows of ``n`` features must move, at the least.

    forward:  read x, write y (``m·n`` elements each), read weight and bias (``n`` each),
              write the float32 mean and rstd of each row (``8·m`` bytes, if ``stats``).
    backward: read x and dy, write dx (``3·m·n``), read weight, read mean and rstd,
              write dweight and dbias.

    Any implementation must move at least this much (ours and PyTorch's store the
    statistics; an implementation that recomputes them still reads x again), so the same
    count divides every implementation's time.
    """
    if m <= 0 or n <= 0:
        raise ValueError(f"m and n must be positive, got m={m}, n={n}")
    s = _size(dtype)
    sw = _size(weight_dtype if weight_dtype is not None else dtype)
    n_params = 2 if affine else 0
    stat_bytes = 8 * m if stats else 0
    fwd = 2 * m * n * s + n_params * n * sw + stat_bytes
    bwd = 3 * m * n * s + (n * sw if affine else 0) + stat_bytes + n_params * n * sw
    table = {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}
    if direction not in table:
        raise ValueError(f"direction must be one of {list(table)}, got {direction!r}")
    return table[direction]


# Adds and multiplies per element in our kernels (see resnorm.kernels):
#   forward  7: sum for the mean, subtract, square, sum for the variance, times rstd, times w, plus b
#   backward 12: x̂ (subtract, multiply), g = w·dy, two row sums (g, g·x̂: 3), dx (subtract,
#                multiply-add, times rstd: 4), dw (multiply, add), db (add)
LAYER_NORM_FLOPS_PER_ELEMENT = {"forward": 7, "backward": 12, "fwd+bwd": 19}


def layer_norm_flops(m: int, n: int, direction: str = "forward") -> int:
    """Floating-point operations of a LayerNorm (per-row scalar work ignored)."""
    if direction not in LAYER_NORM_FLOPS_PER_ELEMENT:
        raise ValueError(f"direction must be one of {list(LAYER_NORM_FLOPS_PER_ELEMENT)}, got {direction!r}")
    return LAYER_NORM_FLOPS_PER_ELEMENT[direction] * m * n


def matmul_tflops(device=None, n: int = 8192, dtype: torch.dtype = torch.bfloat16, **bench_kwargs) -> tuple[float, Timing]:
    """Measured TFLOP/s of an ``n × n`` by ``n × n`` matrix product (``2·n³`` FLOPs): the practical compute ceiling."""
    dev = _device_of(device)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    bench_kwargs.setdefault("flush_l2", False)
    timing = do_bench(lambda: a @ b, device=dev, **bench_kwargs)
    return 2 * n**3 / (timing.median_ms * 1e-3) / 1e12, timing


# --------------------------------------------------------------------------- roofline


def attainable_tflops(intensity: float, bandwidth_gbps: float, peak: float) -> float:
    """The roofline: min(peak, intensity × bandwidth), in TFLOP/s (intensity in FLOP/byte)."""
    return min(peak, intensity * bandwidth_gbps / 1e3)


def roofline(ax, bandwidth_gbps: float, peak: float, points: Sequence[tuple[str, float, float]] = (),
             bandwidth_label: str = "copy bandwidth", peak_label: str = "compute peak"):
    """Draw a roofline on ``ax``: attainable TFLOP/s against arithmetic intensity (FLOP/byte), log-log.

    ``points`` are ``(label, intensity, achieved_tflops)``; points with the same label share a
    marker. The ridge, where the two roofs meet, is at ``peak / bandwidth`` FLOP/byte: a kernel
    to its left can at best run at memory speed.
    """
    import numpy as np

    if bandwidth_gbps <= 0 or peak <= 0:
        raise ValueError(f"bandwidth and peak must be positive, got {bandwidth_gbps} GB/s and {peak} TFLOP/s")
    ridge = peak / (bandwidth_gbps / 1e3)
    intensities = [p[1] for p in points] or [1.0]
    lo = min(min(intensities) / 4, ridge / 1e3)
    hi = max(max(intensities) * 4, ridge * 10)
    xs = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.plot(xs, [attainable_tflops(x, bandwidth_gbps, peak) for x in xs], color="0.2", lw=1.4)
    ax.annotate(f"{bandwidth_label}: {bandwidth_gbps:,.4g} GB/s", (lo * 1.3, attainable_tflops(lo * 1.3, bandwidth_gbps, peak)),
                rotation=0, fontsize=8, color="0.3", xytext=(0, 6), textcoords="offset points")
    ax.annotate(f"{peak_label}: {peak:,.4g} TFLOP/s", (ridge * 1.2, peak), fontsize=8, color="0.3",
                xytext=(0, 4), textcoords="offset points")
    markers = "osD^vP*X"
    labels: list[str] = []
    shown: set[str] = set()
    for label, x, y in points:
        if label not in labels:
            labels.append(label)
        i = labels.index(label)
        first = label not in shown
        shown.add(label)
        ax.loglog([x], [y], markers[i % len(markers)], color=f"C{i}", label=label if first else None, ms=5, alpha=0.85)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved (TFLOP/s)")
    if points:
        ax.legend(loc="lower right")
    return ridge


# --------------------------------------------------------------------------- training FLOPs and MFU


def decoder_flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> int:
    """Training FLOPs per token of a decoder-only Transformer: ``6·N + 12·L·d·T``.

    PaLM (Chowdhery et al., 2022, Appendix B) and nanoGPT's ``estimate_mfu``: 6 FLOPs per
    parameter per token (2 forward, 4 backward) plus attention's two ``T × T`` products,
    counted in full (a causal mask makes half of them unnecessary; the count keeps them, for
    comparability). ``N`` excludes the position embeddings, which do no multiply-adds.
    """
    return 6 * n_params + 12 * n_layers * d_model * seq_len


def encoder_decoder_flops(
    *,
    d_model: int,
    d_ff: int,
    n_encoder_layers: int,
    n_decoder_layers: int,
    src_len: int,
    tgt_len: int,
    batch_size: int,
    vocab_out: int = 0,
    training: bool = True,
) -> dict[str, int]:
    """Matrix-multiply FLOPs of one batch through an encoder-decoder Transformer, term by term.

    With ``S = src_len``, ``T = tgt_len``, ``d = d_model``, ``f = d_ff`` and one multiply-add
    counted as 2 FLOPs, the forward pass per sequence is

    * encoder, per layer: ``S·(2·4d² + 2·2·d·f)`` (Q, K, V, output projections; FFN)
      ``+ 2·2·S²·d`` (``Q Kᵀ`` and ``A V``);
    * decoder, per layer: ``T·(2·4d² + 2·2·d·f)`` (self-attention projections; FFN)
      ``+ 2·2·T²·d`` (self-attention, mask ignored) ``+ T·2·2d² + S·2·2d²`` (cross-attention:
      Q and output projections on the target, K and V on the encoder's memory)
      ``+ 2·2·T·S·d`` (cross-attention products);
    * output projection: ``T·2·d·V``.

    Training costs three times the forward (the backward computes two products for each
    forward one: the gradients with respect to the input and to the weights). Embedding
    lookups, LayerNorm, softmax and the like are not matrix multiplies and are not counted,
    as in the PaLM convention for MFU. Returns each term and the ``total``.
    """
    for name, v in (("d_model", d_model), ("d_ff", d_ff), ("src_len", src_len), ("tgt_len", tgt_len), ("batch_size", batch_size)):
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
    if n_encoder_layers < 0 or n_decoder_layers < 0 or vocab_out < 0:
        raise ValueError("layer counts and vocab_out must be non-negative")
    d, f, S, T = d_model, d_ff, src_len, tgt_len
    encoder = n_encoder_layers * (S * (8 * d * d + 4 * d * f) + 4 * S * S * d)
    decoder = n_decoder_layers * (T * (8 * d * d + 4 * d * f) + 4 * T * T * d + T * 4 * d * d + S * 4 * d * d + 4 * T * S * d)
    output = T * 2 * d * vocab_out
    factor = 3 if training else 1
    terms = {"encoder": encoder, "decoder": decoder, "output": output}
    terms = {k: factor * batch_size * v for k, v in terms.items()}
    terms["total"] = sum(terms.values())
    return terms


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix multiplies ``fn()`` runs, counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def mfu(flops_per_step: float, step_ms: float, peak: float) -> float:
    """Model FLOPs utilization: achieved FLOP/s over ``peak`` (TFLOP/s)."""
    if step_ms <= 0 or peak <= 0:
        raise ValueError(f"step time and peak must be positive, got {step_ms} ms and {peak} TFLOP/s")
    return flops_per_step / (step_ms * 1e-3) / (peak * 1e12)


def tokens_per_second(tokens_per_step: int, step_ms: float) -> float:
    """Training throughput from tokens per step and milliseconds per step."""
    if step_ms <= 0:
        raise ValueError(f"step time must be positive, got {step_ms} ms")
    return tokens_per_step / (step_ms * 1e-3)


# --------------------------------------------------------------------------- tables


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".3g") -> str:
    """A plain-text table of ``rows`` (dicts), columns aligned; floats formatted with ``floatfmt``.

    Missing entries print as ``-``. Plain text keeps the notebooks free of a pandas dependency.
    """
    if not rows:
        return "(no rows)"
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))

    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)
