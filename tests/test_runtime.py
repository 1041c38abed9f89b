import pytest
import torch

from resnorm import runtime


@pytest.mark.parametrize("value", ["quick", "cpu", "full", " Quick "])
def test_mode_reads_the_one_switch(monkeypatch, value):
    monkeypatch.setenv(runtime.MODE_ENV, value)
    assert runtime.mode() == value.strip().lower()
    assert runtime.is_quick() == (value.strip().lower() == "quick")


def test_pick_follows_the_mode(monkeypatch):
    for mode, expected in [("quick", 1), ("cpu", 2), ("full", 3)]:
        monkeypatch.setenv(runtime.MODE_ENV, mode)
        assert runtime.pick(quick=1, cpu=2, full=3) == expected


def test_default_mode_depends_on_the_hardware(monkeypatch):
    monkeypatch.delenv(runtime.MODE_ENV, raising=False)
    assert runtime.mode() == ("full" if torch.cuda.is_available() else "cpu")


def test_a_bad_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(runtime.MODE_ENV, "fast")
    with pytest.raises(ValueError, match="RESNORM_MODE='fast' is not a mode"):
        runtime.mode()


def test_cpu_trains_in_float32_and_needs_no_scaler():
    assert runtime.amp_dtype("cpu") is None
    assert not runtime.grad_scaler("cpu").is_enabled()


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_mixed_precision_follows_compute_capability(monkeypatch, capability, expected):
    # A T4 (7.5) reports is_bf16_supported() through emulation; we look at the capability instead.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: capability)
    assert runtime.amp_dtype("cuda") == expected


def test_seed_everything_repeats_draws():
    runtime.seed_everything(123)
    a = torch.randn(5)
    runtime.seed_everything(123)
    assert torch.equal(a, torch.randn(5))
    runtime.seed_everything(124)
    assert not torch.equal(a, torch.randn(5))
