"""The Triton LayerNorm against float64 references (forward and backward) and torch.nn.LayerNorm.

On a CUDA GPU the kernels are compiled; without one they run in Triton's interpreter on CPU
tensors (TRITON_INTERPRET=1, set per test), so CI checks the same kernel source. Without
Triton at all the kernel tests skip with the reason.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
if not CUDA:
    # Triton reads this when it is first imported (by resnorm.kernels just below, unless
    # something imported it earlier; then the kernel tests skip and say why).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from resnorm import kernels, norms  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
REASON = kernels.unavailable_reason(DEVICE)

needs_triton = pytest.mark.skipif(REASON is not None, reason=f"Triton LayerNorm unavailable on {DEVICE}: {REASON}")


def reference(x, w, b, dy, eps=1e-5):
    """Output and gradients of the from-scratch LayerNorm in float64, from the same (rounded) inputs."""
    x64 = x.detach().double().cpu().requires_grad_()
    w64 = None if w is None else w.detach().double().cpu().requires_grad_()
    b64 = None if b is None else b.detach().double().cpu().requires_grad_()
    n = x.shape[-1]
    y = norms.layer_norm(x64, n, w64, b64, eps)
    y.backward(dy.detach().double().cpu())
    grads = [x64.grad, None if w64 is None else w64.grad, None if b64 is None else b64.grad]
    return y.detach(), grads


def run_triton(x, w, b, dy, eps=1e-5):
    x = x.detach().clone().requires_grad_()
    w = None if w is None else w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    y = kernels.layer_norm(x, x.shape[-1], w, b, eps)
    y.backward(dy)
    return y.detach(), [x.grad, None if w is None else w.grad, None if b is None else b.grad]


def make(shape, dtype, seed=0, affine=(True, True), weight_dtype=None):
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    # An offset mean and a spread that is not 1, so a kernel that skipped centring or scaling fails.
    x = (torch.randn(shape, generator=g) * 3 + 5).to(DEVICE, dtype)
    wd = weight_dtype or dtype
    w = (1 + 0.5 * torch.randn(n, generator=g)).to(DEVICE, wd) if affine[0] else None
    b = torch.randn(n, generator=g).to(DEVICE, wd) if affine[1] else None
    dy = torch.randn(shape, generator=g).to(DEVICE, dtype)
    return x, w, b, dy


def max_err(a, b):
    return (a.double().cpu() - b.double().cpu()).abs().max().item()


# Row counts that are not multiples of the block (37), several backward stripes (130), and
# widths that are not powers of two (100, 384, 5000) and are (256, 1024), and one row per
# program (5000 features: BLOCK_M = 1).
SHAPES = [(37, 100), (130, 256), (2, 9, 384), (6, 1024), (3, 5000)]


@needs_triton
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_matches_float64_reference(shape):
    x, w, b, dy = make(shape, torch.float32)
    y, (dx, dw, db) = run_triton(x, w, b, dy)
    y_ref, (dx_ref, dw_ref, db_ref) = reference(x, w, b, dy)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert max_err(y, y_ref) < 1e-5
    assert max_err(dx, dx_ref) < 1e-5
    # dw and db are sums over all rows: their error grows with the row count.
    rows = x.numel() // shape[-1]
    assert max_err(dw, dw_ref) < 1e-6 * rows * 10
    assert max_err(db, db_ref) < 1e-6 * rows * 10


@needs_triton
@pytest.mark.parametrize("shape", [(37, 100), (130, 256)])
def test_bfloat16_as_accurate_as_pytorch(shape):
    """In bf16 the output rounding dominates; our error must be no worse than F.layer_norm's (plus one rounding)."""
    x, w, b, dy = make(shape, torch.bfloat16)
    y, (dx, dw, db) = run_triton(x, w, b, dy)
    y_ref, (dx_ref, dw_ref, db_ref) = reference(x, w, b, dy)
    xt, wt, bt = (t.detach().clone().requires_grad_() for t in (x, w, b))
    yt = F.layer_norm(xt, (shape[-1],), wt, bt)
    yt.backward(dy)
    assert y.dtype == torch.bfloat16
    ulp = 2.0**-8  # bf16 keeps 8 significant bits: one rounding is at most half of 2**-7 relative
    for ours, theirs, ref in ((y, yt, y_ref), (dx, xt.grad, dx_ref), (dw, wt.grad, dw_ref), (db, bt.grad, db_ref)):
        scale = ref.abs().max().item()
        assert max_err(ours, ref) <= max_err(theirs, ref) + ulp * scale, (max_err(ours, ref), max_err(theirs, ref))
    assert max_err(y, y_ref) < 0.02 * y_ref.abs().max().item()


@needs_triton
def test_bf16_input_with_float32_weights_keeps_each_dtype():
    x, w, b, dy = make((20, 64), torch.bfloat16, weight_dtype=torch.float32)
    y, (dx, dw, db) = run_triton(x, w, b, dy)
    assert (y.dtype, dx.dtype, dw.dtype, db.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32, torch.float32)
    y_ref, (_, dw_ref, _) = reference(x, w, b, dy)
    assert max_err(y, y_ref) < 0.02 * y_ref.abs().max().item()
    assert max_err(dw, dw_ref) < 0.01 * dw_ref.abs().max().item()


@needs_triton
@pytest.mark.parametrize("affine", [(False, False), (True, False)])
def test_without_weight_or_bias(affine):
    x, w, b, dy = make((33, 48), torch.float32, affine=affine)
    y, (dx, dw, db) = run_triton(x, w, b, dy)
    y_ref, (dx_ref, dw_ref, _) = reference(x, w, b, dy)
    assert max_err(y, y_ref) < 1e-5 and max_err(dx, dx_ref) < 1e-5
    assert db is None
    if affine[0]:
        assert max_err(dw, dw_ref) < 1e-4


@needs_triton
def test_statistics_are_per_row_and_float32():
    x, w, b, _ = make((10, 96), torch.bfloat16)
    _, mean, rstd = kernels.layer_norm_forward(x, w, b, 1e-5)
    x64 = x.double().cpu()
    assert mean.dtype == rstd.dtype == torch.float32
    assert max_err(mean, x64.mean(-1)) < 1e-5 * x64.abs().max().item()
    assert max_err(rstd, x64.var(-1, unbiased=False).add(1e-5).rsqrt()) < 1e-4


@needs_triton
def test_module_shares_state_dict_with_torch_and_from_scratch_layer_norm():
    torch.manual_seed(0)
    ref = torch.nn.LayerNorm(64).to(DEVICE)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours = kernels.TritonLayerNorm(64).to(DEVICE)
    ours.load_state_dict(ref.state_dict())  # strict: same keys and shapes
    scratch = norms.LayerNorm(64).to(DEVICE)
    scratch.load_state_dict(ours.state_dict())
    x = torch.randn(4, 7, 64, device=DEVICE)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)
    assert torch.allclose(ours(x), scratch(x), atol=1e-5)
    assert isinstance(ours, norms.LayerNorm)


@needs_triton
def test_multi_dimensional_normalized_shape():
    x = torch.randn(5, 3, 4, 8, device=DEVICE) * 2 + 1
    w = torch.randn(4, 8, device=DEVICE)
    b = torch.randn(4, 8, device=DEVICE)
    assert max_err(kernels.layer_norm(x, (4, 8), w, b), F.layer_norm(x, (4, 8), w, b)) < 1e-5


@needs_triton
def test_non_contiguous_input():
    x, w, b, _ = make((64, 40), torch.float32)
    xt = x.t()  # (40, 64), features not contiguous
    y = kernels.layer_norm(xt, 64, torch.ones(64, device=DEVICE), torch.zeros(64, device=DEVICE))
    assert max_err(y, F.layer_norm(xt, (64,))) < 1e-5


@needs_triton
def test_weight_gradients_are_deterministic():
    x, w, b, dy = make((200, 128), torch.float32, seed=3)
    _, (_, dw1, db1) = run_triton(x, w, b, dy)
    _, (_, dw2, db2) = run_triton(x, w, b, dy)
    assert torch.equal(dw1, dw2) and torch.equal(db1, db2)


@needs_triton
def test_clear_errors_for_bad_input():
    x = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="last 1 dimension"):
        kernels.layer_norm(x, 16)
    with pytest.raises(ValueError, match="weight must have shape"):
        kernels.layer_norm(x, 8, torch.ones(9, device=DEVICE))
    with pytest.raises(ValueError, match="float32, float16 and bfloat16"):
        kernels.layer_norm(x.double(), 8)
    with pytest.raises(ValueError, match="65536 bytes"):
        kernels.layer_norm(torch.randn(2, 16385, device=DEVICE), 16385)
    with pytest.raises(ValueError, match="eps must be positive"):
        kernels.layer_norm(x, 8, eps=0.0)


def test_cpu_tensor_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(kernels, "interpreting", lambda: False)
    monkeypatch.delenv(kernels.INTERPRET_ENV, raising=False)
    assert not kernels.available("cpu")
    if kernels.triton is not None:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 set before triton is imported"):
            kernels.layer_norm(torch.randn(2, 8), 8)
    monkeypatch.setenv(kernels.INTERPRET_ENV, "1")  # too late: triton was imported without it
    if kernels.triton is not None:
        assert "after triton had been imported" in kernels.unavailable_reason("cpu")


def test_missing_triton_is_reported(monkeypatch):
    monkeypatch.setattr(kernels, "triton", None)
    assert not kernels.available("cuda") and not kernels.available("cpu")
    assert "triton is not installed" in kernels.unavailable_reason("cpu")
    with pytest.raises(RuntimeError, match="triton is not installed"):
        kernels.layer_norm(torch.randn(2, 8), 8)


def test_the_committed_tuned_settings_are_valid_and_used():
    # TUNED is written by tools/kernel_sweep.py; every entry must pass the same checks as an override.
    for (direction, n, size), setting in kernels.TUNED.items():
        cfg = kernels.launch_config(n, size, direction)
        assert all(cfg[k] == v for k, v in setting.items()), (direction, n, size)


def test_launch_config_heuristics(monkeypatch):
    monkeypatch.setattr(kernels, "TUNED", {})
    narrow = kernels.launch_config(256, 4)
    wide = kernels.launch_config(4096, 4)
    assert narrow["BLOCK_N"] == 256 and narrow["BLOCK_M"] == 16
    assert wide["BLOCK_N"] == 4096 and wide["BLOCK_M"] == 1
    assert kernels.launch_config(100, 4)["BLOCK_N"] == 128
    for cfg in (narrow, wide):
        assert cfg["num_warps"] & (cfg["num_warps"] - 1) == 0  # a power of two
    assert kernels.launch_config(32768, 2)["BLOCK_N"] == 32768  # 64 KB of bf16 is allowed


def test_launch_config_directions_and_overrides(monkeypatch):
    monkeypatch.setattr(kernels, "TUNED", {})  # the heuristic itself, whatever a sweep measured
    assert kernels.launch_config(1024, 2)["num_warps"] == 8  # 4 rows x 1024 = 4096 elements, 512 per warp
    with pytest.raises(ValueError, match="direction"):
        kernels.launch_config(256, 4, "sideways")
    monkeypatch.setitem(kernels.OVERRIDES, ("bwd", 256, 4), {"BLOCK_M": 2, "num_warps": 2})
    assert kernels.launch_config(256, 4, "bwd")["BLOCK_M"] == 2
    assert kernels.launch_config(256, 4, "fwd")["BLOCK_M"] == 16


@needs_triton
def test_any_override_computes_the_same_result(monkeypatch):
    x, w, b, dy = make((53, 256), torch.float32, seed=5)
    y0, grads0 = run_triton(x, w, b, dy)
    for direction in ("fwd", "bwd"):
        monkeypatch.setitem(kernels.OVERRIDES, (direction, 256, 4), {"BLOCK_M": 4, "num_warps": 2})
    y1, grads1 = run_triton(x, w, b, dy)
    ref, ref_grads = reference(x, w, b, dy)
    assert (y1.double().cpu() - ref).abs().max() < 1e-5
    for g1, g0, gr in zip(grads1, grads0, ref_grads):
        assert (g1.double().cpu() - gr).abs().max() / gr.abs().max() < 1e-5
        assert torch.allclose(g1, g0, rtol=1e-5, atol=1e-5)


# Variants a sweep may pick (tools/kernel_sweep.py): several blocks per forward program
# (ROWS), fewer or more programs sharing the backward's partial sums, the Triton reduction of
# those partial sums. Each must compute what the float64 reference computes, at odd shapes too.
VARIANTS = {
    "fwd rows=4xBLOCK_M": {"fwd": {"BLOCK_M": 2, "ROWS": 8, "num_warps": 2}},
    "fwd one row, 4 per program": {"fwd": {"BLOCK_M": 1, "ROWS": 4, "num_warps": 4}},
    "bwd 1 program/SM, triton reduce": {"bwd": {"programs_per_sm": 1, "reduce": "triton"}},
    "bwd 8 programs/SM, BLOCK_M 4, triton reduce": {"bwd": {"programs_per_sm": 8, "BLOCK_M": 4, "reduce": "triton"}},
    "bwd BLOCK_M 1, torch reduce, 2 warps": {"bwd": {"BLOCK_M": 1, "num_warps": 2, "reduce": "torch"}},
}


def _set_variant(monkeypatch, variant, n, element_size):
    for direction, setting in variant.items():
        monkeypatch.setitem(kernels.OVERRIDES, (direction, n, element_size), setting)


@needs_triton
@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("shape", [(37, 100), (130, 256), (2, 9, 384), (3, 5000)])
def test_every_variant_matches_float64_reference(monkeypatch, name, shape):
    _set_variant(monkeypatch, VARIANTS[name], shape[-1], 4)
    x, w, b, dy = make(shape, torch.float32, seed=7)
    y, (dx, dw, db) = run_triton(x, w, b, dy)
    y_ref, (dx_ref, dw_ref, db_ref) = reference(x, w, b, dy)
    rows = x.numel() // shape[-1]
    assert max_err(y, y_ref) < 1e-5 and max_err(dx, dx_ref) < 1e-5
    assert max_err(dw, dw_ref) < 1e-5 * rows and max_err(db, db_ref) < 1e-5 * rows


@needs_triton
@pytest.mark.parametrize("affine", [(False, False), (True, False), (False, True)])
def test_triton_reduction_without_weight_or_bias(monkeypatch, affine):
    monkeypatch.setitem(kernels.OVERRIDES, ("bwd", 48, 4), {"reduce": "triton", "programs_per_sm": 3})
    x, w, b, dy = make((33, 48), torch.float32, affine=affine)
    y, (dx, dw, db) = run_triton(x, w, b, dy)
    y_ref, (dx_ref, dw_ref, db_ref) = reference(x, w, b, dy)
    assert max_err(y, y_ref) < 1e-5 and max_err(dx, dx_ref) < 1e-5
    assert (dw is None) == (not affine[0]) and (db is None) == (not affine[1])
    if affine[0]:
        assert max_err(dw, dw_ref) < 1e-4
    if affine[1]:
        assert max_err(db, db_ref) < 1e-4


@needs_triton
def test_triton_reduction_keeps_parameter_dtypes_and_bf16_accuracy(monkeypatch):
    for element_size in (2, 4):
        monkeypatch.setitem(kernels.OVERRIDES, ("bwd", 64, element_size), {"reduce": "triton", "programs_per_sm": 2})
    x, w, b, dy = make((20, 64), torch.bfloat16, weight_dtype=torch.float32)
    y, (dx, dw, db) = run_triton(x, w, b, dy)
    assert (y.dtype, dx.dtype, dw.dtype, db.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32, torch.float32)
    _, (_, dw_ref, db_ref) = reference(x, w, b, dy)
    assert max_err(dw, dw_ref) < 0.01 * dw_ref.abs().max().item()
    x, w, b, dy = make((70, 64), torch.bfloat16, seed=2)
    _, (_, dw, db) = run_triton(x, w, b, dy)
    _, (_, dw_ref, db_ref) = reference(x, w, b, dy)
    assert dw.dtype == db.dtype == torch.bfloat16
    assert max_err(dw, dw_ref) < 0.01 * dw_ref.abs().max().item()
    assert max_err(db, db_ref) < 0.01 * db_ref.abs().max().item()


@needs_triton
def test_triton_reduction_is_deterministic(monkeypatch):
    monkeypatch.setitem(kernels.OVERRIDES, ("bwd", 128, 4), {"reduce": "triton", "programs_per_sm": 5})
    x, w, b, dy = make((200, 128), torch.float32, seed=3)
    _, (_, dw1, db1) = run_triton(x, w, b, dy)
    _, (_, dw2, db2) = run_triton(x, w, b, dy)
    assert torch.equal(dw1, dw2) and torch.equal(db1, db2)


@needs_triton
def test_no_grad_path_skips_autograd_and_matches():
    x, w, b, _ = make((37, 100), torch.float32)
    with torch.no_grad():
        y = kernels.layer_norm(x.requires_grad_(), 100, w, b)
    assert y.grad_fn is None
    assert max_err(y, F.layer_norm(x.detach(), (100,), w, b)) < 1e-5
    y2 = kernels.layer_norm(x.detach(), 100, w, b)  # nothing requires grad
    assert y2.grad_fn is None and torch.equal(y, y2)


def test_bad_settings_are_clear_errors(monkeypatch):
    monkeypatch.setitem(kernels.OVERRIDES, ("fwd", 256, 4), {"BLOCK_M": 4, "ROWS": 6})
    with pytest.raises(ValueError, match="ROWS must be a multiple of BLOCK_M"):
        kernels.launch_config(256, 4)
    monkeypatch.setitem(kernels.OVERRIDES, ("fwd", 256, 4), {"reduce": "triton"})
    with pytest.raises(ValueError, match="unknown fwd setting"):
        kernels.launch_config(256, 4)
    monkeypatch.setitem(kernels.OVERRIDES, ("bwd", 256, 4), {"reduce": "atomics"})
    with pytest.raises(ValueError, match="reduce must be one of"):
        kernels.launch_config(256, 4, "bwd")
    monkeypatch.setitem(kernels.OVERRIDES, ("bwd", 256, 4), {"num_warps": 3})
    with pytest.raises(ValueError, match="power of two"):
        kernels.launch_config(256, 4, "bwd")


def test_tuned_defaults_apply_and_overrides_win(monkeypatch):
    monkeypatch.setitem(kernels.TUNED, ("bwd", 256, 2), {"programs_per_sm": 2, "reduce": "triton"})
    cfg = kernels.launch_config(256, 2, "bwd")
    assert cfg["programs_per_sm"] == 2 and cfg["reduce"] == "triton"
    monkeypatch.setitem(kernels.OVERRIDES, ("bwd", 256, 2), {"reduce": "torch"})
    cfg = kernels.launch_config(256, 2, "bwd")
    assert cfg["programs_per_sm"] == 2 and cfg["reduce"] == "torch"
    assert kernels.launch_config(256, 2)["ROWS"] == kernels.launch_config(256, 2)["BLOCK_M"]


def test_launch_config_is_cached_but_follows_edits_of_the_tables(monkeypatch):
    monkeypatch.setattr(kernels, "TUNED", {})
    first = kernels.launch_config(512, 2, "bwd")
    first["BLOCK_M"] = 999  # the caller's copy: the cache must not change with it
    assert kernels.launch_config(512, 2, "bwd")["BLOCK_M"] != 999
    monkeypatch.setitem(kernels.OVERRIDES, ("bwd", 512, 2), {"BLOCK_M": 1})
    assert kernels.launch_config(512, 2, "bwd")["BLOCK_M"] == 1
    monkeypatch.setitem(kernels.OVERRIDES, ("bwd", 512, 2), {"BLOCK_M": 3})
    for _ in range(2):  # a bad setting is refused at every call, not only the first
        with pytest.raises(ValueError, match="power of two"):
            kernels.launch_config(512, 2, "bwd")


def test_host_ceiling_division_matches_tritons():
    for a in (0, 1, 31, 32, 33, 32768, 65537):
        for b in (1, 4, 16, 32):
            assert kernels._cdiv(a, b) == (a + b - 1) // b
