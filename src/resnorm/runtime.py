"""Run-time switches shared by the notebooks, the scripts and the tests.

The one switch for how much work a notebook does is the environment variable
``RESNORM_MODE`` (read here and nowhere else):

``quick``  CI and ``make test``: tiny configurations, seconds to a minute on 2 CPU cores.
``cpu``    a reader's laptop: minutes on a CPU.
``full``   a GPU: the runs whose numbers the book reports.

When the variable is unset, the mode is ``full`` if a CUDA GPU is visible, else ``cpu``.

``RESNORM_SMOKE=1`` together with ``RESNORM_MODE=full`` is the smoke switch of ``make test``:
every full-mode branch of a notebook runs, but every size chosen with :func:`pick` (and the
``full`` training preset's sizes) shrinks to the quick one, and code meant for a GPU runs on the
CPU (Triton in its interpreter). A GPU run is scarce; a typo in a cell that only full mode reaches
must not be found there.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
from typing import TypeVar

import torch

MODE_ENV = "RESNORM_MODE"
SMOKE_ENV = "RESNORM_SMOKE"
MODES = ("quick", "cpu", "full")

T = TypeVar("T")


def mode() -> str:
    """The current mode: the value of ``RESNORM_MODE``, or a default chosen from the hardware."""
    value = os.environ.get(MODE_ENV, "").strip().lower()
    if not value:
        return "full" if torch.cuda.is_available() else "cpu"
    if value not in MODES:
        raise ValueError(f"{MODE_ENV}={value!r} is not a mode; choose one of {', '.join(MODES)}")
    return value


def smoke() -> bool:
    """True when ``RESNORM_SMOKE`` is set (1, true, yes, on) in full mode: full-mode code at quick sizes."""
    value = os.environ.get(SMOKE_ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value not in ("1", "true", "yes", "on"):
        raise ValueError(f"{SMOKE_ENV}={value!r}: use 1 (on) or 0 (off)")
    return mode() == "full"


def gpu_paths() -> bool:
    """Whether to run the cells written for a GPU: on a CUDA device, or in a smoke run (on the CPU)."""
    return torch.cuda.is_available() or smoke()


def is_quick() -> bool:
    """True in the CI mode, where every notebook must finish in well under a minute."""
    return mode() == "quick"


def pick(quick: T, cpu: T, full: T) -> T:
    """Choose a value by mode: ``n_steps = pick(quick=20, cpu=2_000, full=20_000)`` (quick in a smoke run)."""
    if smoke():
        return quick
    return {"quick": quick, "cpu": cpu, "full": full}[mode()]


def device() -> torch.device:
    """CUDA if present, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name(dev: torch.device | str | None = None) -> str:
    """A human name for the device: the GPU model, or the CPU with its core count."""
    dev = torch.device(dev) if dev is not None else device()
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU ({platform.machine()}, {cores} cores)"


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy (if installed) and torch on every device."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy is a requirement, but seeding should not need it
        pass
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators


def amp_dtype(dev: torch.device | str | None = None) -> torch.dtype | None:
    """The mixed-precision dtype that is right for a device, or None for full float32.

    bfloat16 only where the GPU supports it natively (compute capability 8.0 and up:
    A100, H100, ...). ``torch.cuda.is_bf16_supported()`` also says True on a T4, where
    bf16 is emulated and slow, so we look at the capability instead. Older GPUs (T4, V100)
    get float16, which needs a gradient scaler (:func:`grad_scaler`). CPUs and MPS train in float32.
    """
    dev = torch.device(dev) if dev is not None else device()
    if dev.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(dev)
    return torch.bfloat16 if major >= 8 else torch.float16


def autocast(dev: torch.device | str | None = None):
    """A context manager for mixed precision on ``dev`` (a no-op where :func:`amp_dtype` is None)."""
    dev = torch.device(dev) if dev is not None else device()
    dtype = amp_dtype(dev)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype)


def grad_scaler(dev: torch.device | str | None = None) -> torch.amp.GradScaler:
    """A gradient scaler that is active only for float16 (bf16 and float32 do not underflow the same way)."""
    dev = torch.device(dev) if dev is not None else device()
    enabled = amp_dtype(dev) == torch.float16
    return torch.amp.GradScaler(dev.type if dev.type == "cuda" else "cpu", enabled=enabled)


def describe() -> str:
    """One line for the top of a notebook: mode, device, torch version."""
    dev = device()
    dtype = amp_dtype(dev)
    precision = "float32" if dtype is None else str(dtype).replace("torch.", "")
    switch = " (smoke: quick sizes)" if smoke() else ""
    return f"mode={mode()}{switch}  device={device_name(dev)}  precision={precision}  torch={torch.__version__}"
