"""The GPU session's prepared tools run at toy size on the CPU, so a lent GPU is not lost to a typo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_tool(args, tmp_path, timeout=300, returncode=0, **env):
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RESNORM_MODE": "quick", **env}
    done = subprocess.run([sys.executable, *args], cwd=tmp_path, env=environment, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == returncode, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_the_capture_check_runs_and_reports(tmp_path):
    out = tmp_path / "calib.json"
    # Exit status 1: no capture was kept (a CPU cannot capture); on a GPU, 0 is what a run needs.
    run_tool([str(ROOT / "tools/gpu_calibrate.py"), "--smoke", "--check-capture", "--out", str(out)], tmp_path,
             returncode=1)
    report = json.loads(out.read_text())
    # On a CPU the probe falls back and says why; on a GPU the same check must say "cuda graphs".
    assert report["phase0"]["speed"]["decision"] == "eager (CUDA graphs need a CUDA device)"
    assert report["phase0"]["max_relative_loss_difference"] == 0.0
    # Two runs, each the first of a fresh worker process, as on the experiments page.
    first = report["phase0_first_runs"]
    assert len(first) == 2 and all(r["error"] is None for r in first)
    assert all(r["decision"] == "eager (CUDA graphs need a CUDA device)" for r in first)


def test_the_kernel_sweep_writes_a_tuned_table(tmp_path):
    pytest.importorskip("triton")
    target = tmp_path / "kernels_copy.py"
    target.write_text((ROOT / "src/resnorm/kernels.py").read_text())
    out = tmp_path / "sweep.json"
    run_tool([str(ROOT / "tools/kernel_sweep.py"), "--smoke", "--out", str(out), "--write-kernels", str(target)],
             tmp_path, TRITON_INTERPRET="1")
    result = json.loads(out.read_text())
    assert result["tuned"] and not result["wrong"]
    text = target.read_text()
    compile(text, str(target), "exec")  # still Python
    assert text.count("TUNED: dict[tuple[str, int, int], dict] = {") == 1
    assert "# measured by tools/kernel_sweep.py on cpu" in text


def test_the_overhead_split_runs(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "ln.json"
    run_tool([str(ROOT / "tools/ln_overhead.py"), "--smoke", "--out", str(out)], tmp_path, TRITON_INTERPRET="1")
    result = json.loads(out.read_text())
    assert set(result["us_per_call"]) >= {"ours, forward + backward", "F.layer_norm, forward + backward"}


def test_the_gpu_session_script_stops_before_any_run_when_the_environment_is_not_ready(tmp_path):
    import shutil

    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the environment may well be ready")
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    for name in ("tools", "src"):  # a work tree without .gpu-wheels: nothing to install
        (tmp_path / name).symlink_to(ROOT / name)
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(["bash", "tools/gpu_session.sh", "experiments", "performance"], cwd=tmp_path,
                          env={**os.environ, "OUT": str(out)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "environment is not ready" in done.stdout
    assert "resnorm.execute" not in done.stdout  # no notebook was started
    assert not (tmp_path / ".gpu-site").exists() or not any((tmp_path / ".gpu-site").iterdir())
