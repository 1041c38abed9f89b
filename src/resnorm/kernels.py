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
  ``pid`` of a ``(2, G, N)`` buffer, and PyTorch's ``sum`` reduces the G partial rows (or,
  with ``reduce="triton"``, one ``_layer_norm_bwd_reduce`` kernel that also writes dw and db
  in their dtype). The tutorial instead accumulates partial sums in shared buffers guarded
  by a spin lock, whose summation order (and so last bit of the result) changes from run to
  run; here the order is fixed.

Launch settings (:func:`launch_config`): heuristics, then :data:`TUNED` (measured on a GPU by
``tools/kernel_sweep.py``), then :data:`OVERRIDES` (set at run time). Besides block size and
warps they choose variants: rows per forward program (``ROWS``), programs per SM sharing the
backward's partial sums (``programs_per_sm``), and the reduction of those sums (``reduce``).

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
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr):
    # Each program normalizes ROWS rows, BLOCK_M at a time (ROWS = BLOCK_M: one block per
    # program). The loop is unrolled (ROWS is a compile-time constant), so the loads of the
    # next block can be issued while the current one is reduced; weight and bias load once.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    for start in tl.static_range(0, ROWS, BLOCK_M):
        rows = pid * ROWS + start + tl.arange(0, BLOCK_M)
        row_ok = rows < M
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
            y = y * w[None, :]
        if HAS_BIAS:
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


def _layer_norm_bwd_reduce(Partial, DW, DB, P, N,
                           HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                           BLOCK_P: tl.constexpr, BLOCK_COLS: tl.constexpr):
    # Sums the (2, P, N) partial rows of the backward over P, BLOCK_COLS columns per program,
    # in a fixed order (so dw and db are the same bits on every run), and writes dw and db in
    # their final dtype: one launch where PyTorch's sum and two casts take up to three.
    pid = tl.program_id(0)
    cols = pid * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    col_ok = cols < N
    acc_w = tl.zeros([BLOCK_P, BLOCK_COLS], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_P, BLOCK_COLS], dtype=tl.float32)
    for start in range(0, P, BLOCK_P):
        p = start + tl.arange(0, BLOCK_P)
        mask = (p < P)[:, None] & col_ok[None, :]
        offsets = p[:, None] * N + cols[None, :]
        if HAS_WEIGHT:
            acc_w += tl.load(Partial + offsets, mask=mask, other=0.0)
        if HAS_BIAS:
            acc_b += tl.load(Partial + P * N + offsets, mask=mask, other=0.0)
    if HAS_WEIGHT:
        tl.store(DW + cols, tl.sum(acc_w, axis=0).to(DW.dtype.element_ty), mask=col_ok)
    if HAS_BIAS:
        tl.store(DB + cols, tl.sum(acc_b, axis=0).to(DB.dtype.element_ty), mask=col_ok)


_KERNEL_SOURCES = {"fwd": _layer_norm_fwd, "bwd": _layer_norm_bwd, "bwd_reduce": _layer_norm_bwd_reduce}


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


# Launch settings by (direction, N, element size), on top of the heuristics below. Every
# setting computes the same dx, y, mean and rstd (dw and db up to the order of a float32 sum,
# fixed for a given setting), so these change speed only. Keys a setting may hold:
#   "fwd": BLOCK_M (rows per block, a power of two), num_warps, ROWS (rows per program, a
#          multiple of BLOCK_M: the program loops over ROWS // BLOCK_M blocks);
#   "bwd": BLOCK_M, num_warps, programs_per_sm (how many programs, per SM, share the rows and
#          so the partial dw/db sums), reduce ("torch": PyTorch's sum over the partial rows and
#          casts; "triton": one reduction kernel that writes dw and db in their dtype).
# TUNED holds settings measured on a GPU by tools/kernel_sweep.py (paste its last lines here);
# OVERRIDES is for settings chosen at run time (a sweep, a page) and wins over TUNED.
# measured by tools/kernel_sweep.py on NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0
TUNED: dict[tuple[str, int, int], dict] = {
    ('fwd', 256, 2): {'BLOCK_M': 16, 'num_warps': 8, 'ROWS': 16},
    ('bwd', 256, 2): {'BLOCK_M': 32, 'num_warps': 8, 'programs_per_sm': 1, 'reduce': 'triton'},
    ('fwd', 1024, 2): {'BLOCK_M': 4, 'num_warps': 4, 'ROWS': 4},
    ('bwd', 1024, 2): {'BLOCK_M': 4, 'num_warps': 4, 'programs_per_sm': 2, 'reduce': 'triton'},
    ('fwd', 4096, 2): {'BLOCK_M': 2, 'num_warps': 8, 'ROWS': 2},
    ('bwd', 4096, 2): {'BLOCK_M': 2, 'num_warps': 16, 'programs_per_sm': 1, 'reduce': 'triton'},
}
OVERRIDES: dict[tuple[str, int, int], dict] = {}

SETTING_KEYS = {
    "fwd": ("BLOCK_M", "num_warps", "ROWS"),
    "bwd": ("BLOCK_M", "num_warps", "programs_per_sm", "reduce"),
}
REDUCTIONS = ("torch", "triton")


def _is_power_of_two(v) -> bool:
    return isinstance(v, int) and v >= 1 and v & (v - 1) == 0


def _check_setting(direction: str, setting: dict, where: str) -> None:
    unknown = sorted(set(setting) - set(SETTING_KEYS[direction]))
    if unknown:
        raise ValueError(f"{where}: unknown {direction} setting(s) {unknown}; allowed: {list(SETTING_KEYS[direction])}")
    for key in ("BLOCK_M", "num_warps"):
        if key in setting and not _is_power_of_two(setting[key]):
            raise ValueError(f"{where}: {key} must be a power of two, got {setting[key]!r}")
    if "programs_per_sm" in setting and not (isinstance(setting["programs_per_sm"], int) and setting["programs_per_sm"] >= 1):
        raise ValueError(f"{where}: programs_per_sm must be a positive int, got {setting['programs_per_sm']!r}")
    if "reduce" in setting and setting["reduce"] not in REDUCTIONS:
        raise ValueError(f"{where}: reduce must be one of {list(REDUCTIONS)}, got {setting['reduce']!r}")


def _cdiv(a: int, b: int) -> int:
    """Ceiling division on the host. (``triton.cdiv`` is a jitted function: called from Python,
    it goes through Triton's JIT dispatch, about 10 µs a call on a slow CPU, several per LayerNorm.)"""
    return -(-a // b)


def launch_config(n: int, element_size: int, direction: str = "fwd") -> dict:
    """Block sizes, warps and variant for a row of ``n`` features (the heuristics, written down).

    Narrow rows are packed several to a program (``BLOCK_M`` rows, about 4096 elements per
    block) so that a program has enough work to hide memory latency; wide rows get one row
    per program. One warp per 512 elements of the block, 1 to 16 warps: each thread then keeps
    16 elements, several 16-byte loads in flight, where the first version's one warp per 256
    elements left each thread a single 16-byte load of bf16. The forward gives each program
    one block (``ROWS = BLOCK_M``); the backward lets 4 programs per SM share the rows and
    adds up their partial sums with PyTorch (``reduce="torch"``). ``direction`` ("fwd" or
    "bwd") selects the entries of :data:`TUNED` and then :data:`OVERRIDES`, if any.
    """
    if direction not in SETTING_KEYS:
        raise ValueError(f"direction must be 'fwd' or 'bwd', got {direction!r}")
    key = (direction, n, element_size)
    # Computed once per shape and setting, not at every call: the entries of the two tables are
    # part of the cache key, so editing TUNED or OVERRIDES takes effect at the next call.
    tuned, override = (tuple(sorted(table.get(key, {}).items())) for table in (TUNED, OVERRIDES))
    return dict(_launch_config(n, element_size, direction, tuned, override))


@functools.lru_cache(maxsize=256)
def _launch_config(n: int, element_size: int, direction: str, tuned: tuple, override: tuple) -> dict:
    block_n = _block_n(n, element_size)
    block_m = max(1, min(16, 4096 // block_n))
    num_warps = min(16, max(1, (block_m * block_n) // 512))
    num_warps = 1 << (num_warps.bit_length() - 1)  # a power of two
    config = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps}
    key = (direction, n, element_size)
    for table_name, items in (("TUNED", tuned), ("OVERRIDES", override)):
        if items:
            _check_setting(direction, dict(items), f"kernels.{table_name}[{key}]")
            config.update(items)
    if direction == "fwd":
        config.setdefault("ROWS", config["BLOCK_M"])
        if config["ROWS"] < config["BLOCK_M"] or config["ROWS"] % config["BLOCK_M"]:
            raise ValueError(f"ROWS must be a multiple of BLOCK_M, got ROWS={config['ROWS']}, BLOCK_M={config['BLOCK_M']}")
    else:
        config.setdefault("programs_per_sm", 4)
        config.setdefault("reduce", "torch")
    return config


_SM_COUNTS: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


def _num_programs_bwd(m: int, block_m: int, device: torch.device, per_sm: int = 4) -> int:
    """How many programs share the backward's rows: ``per_sm`` per SM, and no more than needed.

    Each program writes one row of partial dw and db sums, which a reduction then adds up:
    more programs stream the rows with more parallelism, fewer leave less to reduce.
    """
    if device.type == "cuda":
        target = per_sm * _sm_count(device)
    else:  # the interpreter runs programs one after another; a few stripes test the reduction
        target = per_sm
    return max(1, min(target, _cdiv(m, block_m)))


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
    y = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    stats = torch.empty((2, m), dtype=torch.float32, device=x2.device)  # one allocation for both
    mean, rstd = stats[0], stats[1]
    _kernels()["fwd"][(_cdiv(m, cfg["ROWS"]),)](
        x2, y, weight if weight is not None else x2, bias if bias is not None else x2, mean, rstd,
        m, n, x2.stride(0), y.stride(0), eps,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], ROWS=cfg["ROWS"], num_warps=cfg["num_warps"],
    )
    return y, mean, rstd


# The reduction kernel's tile: BLOCK_P partial rows by BLOCK_COLS columns per step.
REDUCE_BLOCK_P = 64
REDUCE_BLOCK_COLS = 32


def layer_norm_backward(dy2: torch.Tensor, x2: torch.Tensor, weight, mean, rstd, has_bias: bool):
    """Launch the backward kernels; return ``dx, dw, db`` (dw/db None where absent)."""
    m, n = x2.shape
    cfg = launch_config(n, x2.element_size(), "bwd")
    block_m = cfg["BLOCK_M"]
    programs = _num_programs_bwd(m, block_m, x2.device, cfg["programs_per_sm"])
    rows_per_program = _cdiv(_cdiv(m, programs), block_m) * block_m
    programs = _cdiv(m, rows_per_program)
    has_weight = weight is not None
    dx = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    # One buffer for both partial sums, so that one (deterministic) reduction adds them up.
    partial = torch.empty((2, programs, n), dtype=torch.float32, device=x2.device)
    k = _kernels()
    k["bwd"][(programs,)](
        x2, dy2, dx, weight if has_weight else x2, mean, rstd, partial[0], partial[1],
        m, n, x2.stride(0), dy2.stride(0), dx.stride(0), rows_per_program,
        HAS_WEIGHT=has_weight, HAS_BIAS=has_bias,
        BLOCK_M=block_m, BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
    )
    param_dtype = weight.dtype if has_weight else x2.dtype
    if not (has_weight or has_bias):
        return dx, None, None
    if cfg["reduce"] == "triton":
        # One kernel adds up the partial rows in a fixed order and writes dw, db in their dtype.
        dw = torch.empty(n, dtype=param_dtype, device=x2.device) if has_weight else None
        db = torch.empty(n, dtype=param_dtype, device=x2.device) if has_bias else None
        k["bwd_reduce"][(_cdiv(n, REDUCE_BLOCK_COLS),)](
            partial, dw if has_weight else partial, db if has_bias else partial, programs, n,
            HAS_WEIGHT=has_weight, HAS_BIAS=has_bias,
            BLOCK_P=REDUCE_BLOCK_P, BLOCK_COLS=REDUCE_BLOCK_COLS, num_warps=4,
        )
        return dx, dw, db
    # The (2, programs, n) partial sums are small (programs is a few per SM); PyTorch's sum adds
    # them in a fixed order (no atomics), so dw and db are the same bits on every run.
    sums = partial.sum(dim=1)
    dw = sums[0].to(param_dtype) if has_weight else None
    db = sums[1].to(param_dtype) if has_bias else None
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
    if not torch.is_grad_enabled() or not (
        x.requires_grad or (weight is not None and weight.requires_grad) or (bias is not None and bias.requires_grad)
    ):
        # Nothing to differentiate: launch the forward kernel without autograd's bookkeeping.
        return layer_norm_forward(_as_rows(x, n), weight, bias, eps)[0].view(x.shape)
    return TritonLayerNormFunction.apply(x, n, weight, bias, eps)


class TritonLayerNorm(LayerNorm):
    """:class:`resnorm.norms.LayerNorm` with the Triton kernels: same constructor and state dict.

    Weights load from (and into) ``resnorm.norms.LayerNorm`` and ``torch.nn.LayerNorm``.
    Under autocast the kernels keep the input's dtype (``torch.nn.LayerNorm`` autocasts to
    float32); the statistics are always computed in float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
