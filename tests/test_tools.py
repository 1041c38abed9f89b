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


def _pending_edits():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pending_edits", ROOT / "tools/pending_edits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", sorted(_pending_edits().PENDING))
def test_every_pending_gpu_edit_still_applies_and_leaves_valid_python(page):
    """An edit waiting for a GPU run must apply to the page as committed, once, and stay Python.

    When this fails after a GPU run was committed, delete the page's entries from
    tools/pending_edits.py: the page carries them now.
    """
    import ast

    from IPython.core.inputtransformer2 import TransformerManager

    from resnorm import stamps

    pending = _pending_edits()
    edits = pending.PENDING[page]
    nb = stamps.read_notebook(ROOT / page)
    assert pending.problems(nb, edits) == []
    before = stamps.code_hash(nb)
    edited = pending.apply(nb, edits)
    assert stamps.code_hash(edited) != before
    for cell in edited["cells"]:
        if cell["cell_type"] == "code":
            ast.parse(TransformerManager().transform_cell("".join(cell["source"])))  # magics as IPython runs them
    for _old, new, _why in edits:
        assert sum("".join(c["source"]).count(new) for c in edited["cells"]) >= 1


def test_a_pending_edit_that_does_not_apply_is_reported_and_stops_the_page():
    pending = _pending_edits()
    nb = {"cells": [{"cell_type": "code", "source": "x = 1\nx = 1\n"}]}
    assert len(pending.problems(nb, [("no such text", "", "")])) == 1
    assert len(pending.problems(nb, [("x = 1", "x = 2", "")])) == 1  # twice is as bad as never
    with pytest.raises(ValueError):
        pending.apply(nb, [("no such text", "", "")])
    assert "pending" in (ROOT / "tools/gpu_session.sh").read_text()
