"""A LayerNorm written in Triton: a fused forward kernel and a fused backward kernel.

The design follows the Triton tutorial "Layer Normalization" (05-layer-norm), with one
change in the backward pass that makes it deterministic:

* **Forward** (``_layer_norm_fwd``): each program normalizes a block of ``BLOCK_M`` whole rows
  (``BLOCK_M = 1`` for wide rows: one program per row). A row is read from memory once,
  held in registers, reduced in float32 to its mean and reciprocal standard deviation
  ``rstd = 1/sqrt(var + eps)``, normalized, scaled and shifted, and written once. The mean
  and rstd are stored (8 bytes per row) so the backward pass need not recompute them.
* **Backward** (``_layer_norm_bwd``): with ``x̂ = (x - mean)·rstd`` and ``g = w ⊙ dy``,

      dx = rstd · (g - mean(g) - x̂ · mean(g ⊙ x̂))          (means over the row)
      dw = Σ_rows dy ⊙ x̂,    db = Σ_rows dy

  dx is a per-row computation, but dw and db are sums over *all* rows. Each program walks
  a contiguous stripe of rows, writes their dx, and accumulates its own partial dw and db in
  a float32 tile of registers, summed over its rows once at the end; it stores them in row
  ``pid`` of a ``(2, G, N)`` buffer, and PyTorch's ``sum`` reduces the G partial rows. The
  tutorial instead accumulates partial sums in shared buffers guarded by a spin lock, whose
  summation order (and so last bit of the result) changes from run to run; here the order
  is fixed.

Rows wider than 64 KB (16384 float32 or 32768 bfloat16 features) do not fit the one-block
design and are rejected with a clear error, as in the tutorial.

Where it runs: compiled on a CUDA GPU when ``triton`` is installed, or, for testing on a
machine without a GPU, in Triton's interpreter on CPU tensors (set ``TRITON_INTERPRET=1``
in the environment before Triton is first imported; the interpreter is slow but runs the
same kernel source). :func:`available` says whether a device can run the kernels, and
:func:`unavailable_reason` why not.
"""

from __future__ import annotations

import functools
import math
import os

import torch

from .norms import LayerNorm, _as_shape, _check_input

try:  # Triton ships with CUDA builds of PyTorch on Linux; CPU builds lack it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

# One block holds a whole row: at most 64 KB of it, as in the Triton tutorial.
MAX_ROW_BYTES = 65536
INTERPRET_ENV = "TRITON_INTERPRET"


def _env_interpret() -> bool:
    return os.environ.get(INTERPRET_ENV, "0").strip().lower() in ("1", "true", "on", "yes")


def interpreting() -> bool:
    """True when Triton was imported with its interpreter on (``TRITON_INTERPRET=1``).

    Triton decides at import: its own library functions (``tl.sum``, ...) are built either
    for the compiler or for the interpreter, and our kernels must be built the same way.
    So the variable must be set before the first ``import triton`` (``torch.compile``
    imports it too); setting it later has no effect on this process.
    """
    return tl is not None and type(tl.sum).__name__ == "InterpretedFunction"


def unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (default: CUDA), or None if they can."""
    dev = torch.device(device) if device is not None else torch.device("cuda")
    if triton is None:
        return "triton is not installed (CPU builds of PyTorch ship without it; `pip install triton` on Linux x86-64)"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible"
        if interpreting():
            return f"triton was imported with {INTERPRET_ENV}=1: the interpreter runs on CPU tensors only"
        return None
    if dev.type == "cpu":
        if interpreting():
            return None
        if _env_interpret():
            return f"{INTERPRET_ENV}=1 was set after triton had been imported; set it before the first `import triton`"
        return (f"the kernels need a CUDA GPU, or {INTERPRET_ENV}=1 set before triton is imported "
                "to run them in Triton's interpreter on the CPU")
    return f"device type {dev.type!r} is not supported (only CUDA, or CPU under {INTERPRET_ENV}=1)"


def available(device: torch.device | str | None = None) -> bool:
    """True when the Triton LayerNorm can run on ``device`` (default: CUDA)."""
    return unavailable_reason(device) is None


def _require(x: torch.Tensor) -> None:
    reason = unavailable_reason(x.device)
    if reason is not None:
        raise RuntimeError(f"the Triton LayerNorm cannot run on {x.device}: {reason}")


# --------------------------------------------------------------------------- kernels
# The kernel bodies are plain functions, decorated with triton.jit on first use (see
# _kernels). Thanks to `from __future__ import annotations`, the `tl.constexpr`
# annotations stay strings, which Triton reads, and this module imports without Triton.


def _layer_norm_fwd(X, Y, W, B, Mean, Rstd, M, N, stride_x, stride_y, eps,
                    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)  # M·N can exceed 2**31 elements
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    # Two passes over the registers (not E[x²] - E[x]²), so a large mean costs no precision.
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd[:, None]
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = y * w[None, :]
    if HAS_BIAS:
        b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = y + b[None, :]
    tl.store(Mean + rows, mean, mask=row_ok)
    tl.store(Rstd + rows, rstd, mask=row_ok)
    tl.store(Y + rows64[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


def _layer_norm_bwd(X, DY, DX, W, Mean, Rstd, DW_partial, DB_partial,
                    M, N, stride_x, stride_dy, stride_dx, rows_per_program,
                    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    # The partial sums of dw and db stay a (BLOCK_M, BLOCK_N) tile in registers and are summed
    # over their rows once, after the loop: summing over rows inside the loop (the first
    # version) costs a reduction across warps, through shared memory, at every step.
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    first = pid * rows_per_program
    # rows_per_program is a multiple of BLOCK_M, so stripes never overlap.
    for start in range(0, rows_per_program, BLOCK_M):
        rows = first + start + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        if HAS_WEIGHT:
            g = dy * w[None, :]
        else:
            g = dy
        c_g = tl.sum(g, axis=1) / N  # mean(g) over the row
        c_gx = tl.sum(g * xhat, axis=1) / N  # mean(g ⊙ x̂) over the row
        dx = (g - c_g[:, None] - xhat * c_gx[:, None]) * rstd[:, None]
        tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_WEIGHT:
            dw += dy * xhat
        if HAS_BIAS:
            db += dy
    if HAS_WEIGHT:
        tl.store(DW_partial + pid * N + cols, tl.sum(dw, axis=0), mask=col_ok)
    if HAS_BIAS:
        tl.store(DB_partial + pid * N + cols, tl.sum(db, axis=0), mask=col_ok)


_KERNEL_SOURCES = {"fwd": _layer_norm_fwd, "bwd": _layer_norm_bwd}


@functools.lru_cache(maxsize=1)
def _kernels() -> dict:
    """The jitted kernels, built once, in the mode Triton was imported in (compiled or interpreted)."""
    if triton is None:  # pragma: no cover - guarded by _require
        raise RuntimeError(unavailable_reason())
    # triton.jit reads TRITON_INTERPRET when it decorates; pin it to the import-time mode.
    saved = os.environ.get(INTERPRET_ENV)
    os.environ[INTERPRET_ENV] = "1" if interpreting() else "0"
    try:
        return {name: triton.jit(fn) for name, fn in _KERNEL_SOURCES.items()}
    finally:
        if saved is None:
            del os.environ[INTERPRET_ENV]
        else:
            os.environ[INTERPRET_ENV] = saved


# --------------------------------------------------------------------------- launch config


def _block_n(n: int, element_size: int) -> int:
    block = triton.next_power_of_2(n) if triton is not None else 1 << (n - 1).bit_length()
    if n * element_size > MAX_ROW_BYTES:
        raise ValueError(
            f"the Triton LayerNorm holds a whole row in one block, at most {MAX_ROW_BYTES} bytes; "
            f"a row of {n} features of {element_size} bytes is {n * element_size} bytes"
        )
    return block


# Launch settings measured to be better on a GPU than the heuristics below, by (direction, N,
# element size): {"BLOCK_M": ..., "num_warps": ...}. Empty unless a benchmark fills it in
# (the performance chapter measures a few candidates and keeps the fastest); every setting
# computes the same result, so this changes speed only.
OVERRIDES: dict[tuple[str, int, int], dict[str, int]] = {}


def launch_config(n: int, element_size: int, direction: str = "fwd") -> dict:
    """Block sizes and warps for a row of ``n`` features (the heuristics, written down).

    Narrow rows are packed several to a program (``BLOCK_M`` rows, about 4096 elements per
    block) so that a program has enough work to hide memory latency; wide rows get one row
    per program. One warp per 512 elements of the block, 1 to 16 warps: each thread then keeps
    16 elements, several 16-byte loads in flight, where the first version's one warp per 256
    elements left each thread a single 16-byte load of bf16. ``direction`` ("fwd" or
    "bwd") selects an entry of :data:`OVERRIDES`, if there is one.
    """
    if direction not in ("fwd", "bwd"):
        raise ValueError(f"direction must be 'fwd' or 'bwd', got {direction!r}")
    block_n = _block_n(n, element_size)
    block_m = max(1, min(16, 4096 // block_n))
    num_warps = min(16, max(1, (block_m * block_n) // 512))
    num_warps = 1 << (num_warps.bit_length() - 1)  # a power of two
    config = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps}
    config.update(OVERRIDES.get((direction, n, element_size), {}))
    return config


def _num_programs_bwd(m: int, block_m: int, device: torch.device) -> int:
    """How many programs share the backward's rows: a few per SM, and no more than needed.

    Each program writes one row of partial dw and db sums, which a reduction then adds up:
    more programs stream the rows with more parallelism, fewer leave less to reduce.
    """
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = 4 * sms
    else:  # the interpreter runs programs one after another; a few stripes test the reduction
        target = 4
    return max(1, min(target, triton.cdiv(m, block_m)))


# --------------------------------------------------------------------------- autograd


def _as_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """View ``t`` as (rows, n) with unit stride along the features (copying only if needed)."""
    t2 = t.reshape(-1, n)
    if t2.stride(-1) != 1:
        t2 = t2.contiguous()
    return t2


def layer_norm_forward(x2: torch.Tensor, weight, bias, eps: float):
    """Launch the forward kernel on a (M, N) tensor; return ``y, mean, rstd``."""
    m, n = x2.shape
    cfg = launch_config(n, x2.element_size())
    y = torch.empty_like(x2, memory_format=torch.contiguous_format)
    mean = torch.empty(m, dtype=torch.float32, device=x2.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x2.device)
    k = _kernels()
    grid = (triton.cdiv(m, cfg["BLOCK_M"]),)
    k["fwd"][grid](
        x2, y, weight if weight is not None else x2, bias if bias is not None else x2, mean, rstd,
        m, n, x2.stride(0), y.stride(0), eps,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
    )
    return y, mean, rstd


def layer_norm_backward(dy2: torch.Tensor, x2: torch.Tensor, weight, mean, rstd, has_bias: bool):
    """Launch the backward kernels; return ``dx, dw, db`` (dw/db None where absent)."""
    m, n = x2.shape
    cfg = launch_config(n, x2.element_size(), "bwd")
    block_m = cfg["BLOCK_M"]
    programs = _num_programs_bwd(m, block_m, x2.device)
    rows_per_program = triton.cdiv(triton.cdiv(m, programs), block_m) * block_m
    programs = triton.cdiv(m, rows_per_program)
    has_weight = weight is not None
    dx = torch.empty_like(x2, memory_format=torch.contiguous_format)
    # One buffer for both partial sums, so that one (deterministic) reduction adds them up.
    partial = torch.empty((2, programs, n), dtype=torch.float32, device=x2.device)
    k = _kernels()
    k["bwd"][(programs,)](
        x2, dy2, dx, weight if has_weight else x2, mean, rstd, partial[0], partial[1],
        m, n, x2.stride(0), dy2.stride(0), dx.stride(0), rows_per_program,
        HAS_WEIGHT=has_weight, HAS_BIAS=has_bias,
        BLOCK_M=block_m, BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
    )
    # The (2, programs, n) partial sums are small (programs is a few per SM); PyTorch's sum adds
    # them in a fixed order (no atomics), so dw and db are the same bits on every run.
    sums = partial.sum(dim=1)
    dw = sums[0].to(weight.dtype) if has_weight else None
    db = sums[1].to(weight.dtype if has_weight else x2.dtype) if has_bias else None
    return dx, dw, db


class TritonLayerNormFunction(torch.autograd.Function):
    """``y = LayerNorm(x)`` over the last ``n`` features, with the Triton kernels both ways."""

    @staticmethod
    def forward(ctx, x, normalized_numel: int, weight, bias, eps: float):
        shape = x.shape
        x2 = _as_rows(x, normalized_numel)
        y, mean, rstd = layer_norm_forward(x2, weight, bias, eps)
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.x_shape = shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, mean, rstd = ctx.saved_tensors
        dy2 = _as_rows(dy, x2.shape[1])
        dx, dw, db = layer_norm_backward(dy2, x2, weight, mean, rstd, ctx.has_bias)
        if db is not None and db.dtype != ctx.bias_dtype:
            db = db.to(ctx.bias_dtype)
        return dx.view(ctx.x_shape), None, dw, db, None


def layer_norm(x: torch.Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """Same signature and result as :func:`resnorm.norms.layer_norm`, computed by the Triton kernels.

    Statistics are computed in float32 whatever the input dtype; the output has the input's dtype.
    """
    shape = _as_shape(normalized_shape)
    _check_input(x, shape, "triton layer_norm")
    _require(x)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    n = math.prod(shape)
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            if tuple(p.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)}, got {list(p.shape)}")
            if p.device != x.device:
                raise ValueError(f"{name} is on {p.device} but the input is on {x.device}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"the Triton LayerNorm supports float32, float16 and bfloat16 inputs, got {x.dtype}")
    weight = weight.contiguous() if weight is not None else None
    bias = bias.contiguous() if bias is not None else None
    return TritonLayerNormFunction.apply(x, n, weight, bias, eps)


class TritonLayerNorm(LayerNorm):
    """:class:`resnorm.norms.LayerNorm` with the Triton kernels: same constructor and state dict.

    Weights load from (and into) ``resnorm.norms.LayerNorm`` and ``torch.nn.LayerNorm``.
    Under autocast the kernels keep the input's dtype (``torch.nn.LayerNorm`` autocasts to
    float32); the statistics are always computed in float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
