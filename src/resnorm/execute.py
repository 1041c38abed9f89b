"""The project's notebook executor: run notebooks top to bottom and stamp them.

    python -m resnorm.execute [--mode quick|cpu|full] NOTEBOOK...

Outputs in committed notebooks come only from this command. It sets ``RESNORM_MODE`` for
the kernel (see :mod:`resnorm.runtime`), executes every cell with nbclient in the
notebook's own folder, and writes back the outputs plus a stamp: device, torch version,
mode, date, wall time and a hash of the code cells (:mod:`resnorm.stamps`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

from . import __version__, stamps

DEFAULT_CELL_TIMEOUT_S = 1800

# The chapters whose committed outputs come from a GPU run, in the order `make gpu` runs them,
# with each one's budget on one H100 (seconds of executor wall time, kernel start included).
# The notebooks size their work to these budgets (time budgets in code); the executor reports
# each one's wall time against its budget as a goal line.
GPU_CHAPTERS: dict[str, float] = {
    "book/training.ipynb": 270.0,
    "book/performance.ipynb": 90.0,
    "book/experiments.ipynb": 240.0,
}


def _device_facts(mode: str) -> dict:
    """Describe the hardware the kernel will see (the kernel runs on this machine, in this environment)."""
    import torch

    from . import runtime

    dev = runtime.device()
    if mode == "full" and dev.type != "cuda":
        raise SystemExit(
            "full mode is for a GPU and no CUDA device is visible; use --mode cpu "
            "(a CPU run must never be stamped as a GPU run)"
        )
    dtype = runtime.amp_dtype(dev)
    return {
        "device": runtime.device_name(dev),
        "device_type": dev.type,
        "precision": "float32" if dtype is None else str(dtype).replace("torch.", ""),
        "torch": torch.__version__.split("+")[0],
        "torch_build": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def insert_stamp(nb, stamp: dict) -> None:
    """Put the stamp in the metadata and its sentence under the title (replacing an older one)."""
    import nbformat

    nb.cells = [c for c in nb.cells if stamps.STAMP_TAG not in c.get("metadata", {}).get("tags", [])]
    cell = nbformat.v4.new_markdown_cell(stamps.stamp_cell_source(stamp), metadata={"tags": [stamps.STAMP_TAG]})
    first = nb.cells[0] if nb.cells else None
    has_title = first is not None and first.cell_type == "markdown" and first.source.lstrip().startswith("# ")
    nb.cells.insert(1 if has_title else 0, cell)
    nb.metadata.setdefault(stamps.METADATA_KEY, {})["stamp"] = stamp


def slowest_cells(path: str | Path, count: int = 3) -> str:
    """The ``count`` slowest code cells of an executed notebook, e.g. "code cell 4: 190.2 s, ..."."""
    import json

    timings = json.loads(Path(path).read_text()).get("metadata", {}).get(stamps.METADATA_KEY, {}).get("cell_wall_s", [])
    timed = sorted(((t, i) for i, t in enumerate(timings, 1) if t is not None), reverse=True)[:count]
    return ", ".join(f"code cell {i}: {t:.1f} s" for t, i in timed) or "no timings"


def _parse_time(text: str) -> dt.datetime:
    """nbclient's ISO timestamps ("2026-11-26T10:00:00.123456Z")."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def execute_notebook(path: str | Path, mode: str, timeout: int = DEFAULT_CELL_TIMEOUT_S, kernel_name: str = "python3") -> dict:
    """Execute ``path`` in place and return its stamp. Raises on a failing cell (the file is left untouched)."""
    import nbformat
    from nbclient import NotebookClient

    from .runtime import MODE_ENV, MODES

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    path = Path(path)
    if not path.exists() or path.suffix != ".ipynb":
        raise FileNotFoundError(f"{path} is not a notebook file (.ipynb)")
    facts = _device_facts(mode)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # start clean: no output may survive from an earlier run
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    previous = os.environ.get(MODE_ENV)
    os.environ[MODE_ENV] = mode  # inherited by the kernel process
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name=kernel_name,
            resources={"metadata": {"path": str(path.parent.resolve())}},
            record_timing=True,  # read into cell_wall_s below, then dropped from the cells
            # nbclient must track widget state while it runs: with store_widget_state=False an
            # Output widget that prints (ipywidgets.interact does) raises KeyError inside
            # nbclient (0.11) and the cell never finishes. The state is dropped below instead.
            store_widget_state=True,
        )
        start = time.perf_counter()
        client.execute()
        wall = time.perf_counter() - start
    finally:
        if previous is None:
            os.environ.pop(MODE_ENV, None)
        else:
            os.environ[MODE_ENV] = previous
    # Seconds per code cell, in order: where a page's time goes, for sizing the next run's plan.
    # (Kept in the notebook's metadata; the per-cell timestamps nbclient wrote are removed.)
    cell_wall_s = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        times = cell.metadata.pop("execution", {})
        began, ended = times.get("iopub.execute_input"), times.get("shell.execute_reply")
        cell_wall_s.append(round((_parse_time(ended) - _parse_time(began)).total_seconds(), 2)
                           if began and ended else None)
    stamp = {
        **facts,
        "mode": mode,
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "wall_s": round(wall, 1),
        "code_sha256": stamps.code_hash(nb),
        "resnorm": __version__,
    }
    # No widget state in the committed notebook: it is large, and on the site it would pull the
    # widget manager from a CDN. Widget outputs render as a "needs a live kernel" note instead
    # (_static/resnorm.css); chapters draw a static figure of the widget's initial state.
    nb.metadata.pop("widgets", None)
    insert_stamp(nb, stamp)
    nb.metadata[stamps.METADATA_KEY]["cell_wall_s"] = cell_wall_s
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)
    return stamp


def main(argv: list[str] | None = None) -> int:
    from .runtime import MODES, mode as default_mode

    parser = argparse.ArgumentParser(prog="python -m resnorm.execute", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks to execute in place")
    parser.add_argument("--gpu-chapters", action="store_true",
                        help="execute the GPU chapters (GPU_CHAPTERS) in full mode, one after another")
    parser.add_argument("--copy-to", default=None,
                        help="copy each notebook here as soon as it is executed (for a remote GPU run)")
    parser.add_argument("--mode", choices=MODES, default=None, help="default: $RESNORM_MODE, else full on a GPU, cpu otherwise")
    parser.add_argument("--timeout", type=int, default=DEFAULT_CELL_TIMEOUT_S, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    if args.gpu_chapters:
        if args.notebooks or (args.mode not in (None, "full")):
            parser.error("--gpu-chapters runs the GPU chapters in full mode; give no notebooks and no other mode")
        notebooks, mode = list(GPU_CHAPTERS), "full"
    else:
        if not args.notebooks:
            parser.error("name the notebooks to execute, or use --gpu-chapters")
        notebooks, mode = args.notebooks, args.mode or default_mode()
    failed = 0
    total = time.perf_counter()
    for nb_path in notebooks:
        print(f"executing {nb_path} in {mode} mode ...", flush=True)
        try:
            stamp = execute_notebook(nb_path, mode, timeout=args.timeout)
        except Exception as exc:  # report every notebook, then fail
            failed += 1
            print(f"FAILED {nb_path}: {type(exc).__name__}: {str(exc)[-3000:]}", file=sys.stderr, flush=True)
            continue
        print(f"  {stamps.stamp_line(stamp)}", flush=True)
        print(f"  slowest cells: {slowest_cells(nb_path)}", flush=True)
        budget = GPU_CHAPTERS.get(Path(nb_path).as_posix()) if mode == "full" else None
        if budget is not None:
            from . import goals

            goals.check(f"wall_time_{Path(nb_path).stem}", stamp["wall_s"], "<=", budget, fmt="s")
        if args.copy_to:
            import shutil

            Path(args.copy_to).mkdir(parents=True, exist_ok=True)
            shutil.copy(nb_path, Path(args.copy_to) / Path(nb_path).name)
    print(f"{len(notebooks) - failed} of {len(notebooks)} notebooks executed in "
          f"{stamps.format_duration(time.perf_counter() - total)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
