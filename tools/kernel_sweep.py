"""Sweep the Triton LayerNorm's launch settings on a GPU, within a minute, and say which to keep.

For each goal shape (32768x256, 65536x1024, 16384x4096, bfloat16) it times, against
F.layer_norm and a device-to-device copy measured in the same process:

* forward: the kernel alone (``kernels.layer_norm_forward``) for several BLOCK_M / warps /
  ROWS (rows per program) settings, against ``F.layer_norm`` under ``no_grad``;
* backward: the backward kernels alone (``kernels.layer_norm_backward``, the partial-sum
  reduction included) for several BLOCK_M / warps settings, each with 1, 2, 4 or 8 programs
  per SM sharing the partial dw/db sums and with either reduction (PyTorch's sum, or the
  Triton reduction kernel), against ``aten.native_layer_norm_backward``;
* end to end: forward + backward through autograd with the best of each, against
  ``F.layer_norm`` (what the performance chapter's goals measure).

Every candidate is first checked against F.layer_norm (a wrong candidate is reported and never
chosen). Timings use ``resnorm.bench.do_bench_interleaved`` (candidates take turns, the L2
cache is flushed before every call, medians with p20-p80 spread). Settings are compiled one at
a time and the sweep stops where it is at ``--budget-s`` (default 55 s from the start,
Triton's compilation included), still writing what it measured. The output: a JSON file
(``--out``), a compact table, and at the end a ``TUNED = {...}`` block to paste into
``src/resnorm/kernels.py``.

GPU:   PYTHONPATH=src python3 tools/kernel_sweep.py --out kernel_sweep.json
CPU:   PYTHONPATH=src python tools/kernel_sweep.py --smoke --out /tmp/sweep.json
       (tiny sizes, Triton's interpreter: checks only that the sweep runs to its end)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

START = time.perf_counter()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="path of the JSON file to write")
    p.add_argument("--smoke", action="store_true", help="tiny sizes; on a machine without CUDA, Triton's interpreter")
    p.add_argument("--budget-s", type=float, default=55.0, help="stop sweeping after this many seconds (default 55)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per candidate (default 15; 2 with --smoke)")
    p.add_argument("--write-kernels", default="", help="also write the best settings into this kernels.py")
    return p.parse_args(argv)


ARGS = parse_args()
if ARGS.smoke:
    # Triton reads this when it is first imported; without CUDA the kernels need the interpreter.
    import torch  # noqa: E402

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from resnorm import bench, kernels  # noqa: E402

EPS = 1e-5
DTYPE = torch.bfloat16
ESIZE = 2


def elapsed() -> float:
    return time.perf_counter() - START


class OutOfTime(Exception):
    pass


def check_time():
    if elapsed() > ARGS.budget_s:
        raise OutOfTime


# --------------------------------------------------------------------------- candidates


def fwd_candidates(n: int) -> list[dict]:
    cands = _fwd_candidates(n)
    return cands[:3] if ARGS.smoke else cands


def _fwd_candidates(n: int) -> list[dict]:
    """Forward settings to try at width n, most promising first (the current default first of all)."""
    base = kernels.launch_config(n, ESIZE, "fwd")
    bm, w = base["BLOCK_M"], base["num_warps"]
    out = [{"BLOCK_M": bm, "num_warps": w, "ROWS": bm}]
    if n <= 512:  # narrow rows: several blocks per program, bigger or smaller blocks
        out += [{"BLOCK_M": bm, "num_warps": 4, "ROWS": bm}, {"BLOCK_M": bm, "num_warps": w, "ROWS": 4 * bm},
                {"BLOCK_M": 2 * bm, "num_warps": 8, "ROWS": 2 * bm}, {"BLOCK_M": bm // 2, "num_warps": 2, "ROWS": 4 * bm},
                {"BLOCK_M": bm, "num_warps": 4, "ROWS": 2 * bm}]
    elif n <= 2048:
        out += [{"BLOCK_M": bm, "num_warps": 2, "ROWS": bm}, {"BLOCK_M": bm, "num_warps": 4, "ROWS": bm},
                {"BLOCK_M": 1, "num_warps": 2, "ROWS": 1}, {"BLOCK_M": 2, "num_warps": 2, "ROWS": 4},
                {"BLOCK_M": bm, "num_warps": 4, "ROWS": 2 * bm},
                # One warp per program: a row's two reductions need no shared memory or barrier
                # (every setting above, at 1024 features, stayed near 0.65 of copy bandwidth on an
                # H200, against 0.91 at 4096 features); and twice the bytes per program.
                {"BLOCK_M": 1, "num_warps": 1, "ROWS": 1}, {"BLOCK_M": 2, "num_warps": 1, "ROWS": 4},
                {"BLOCK_M": 8, "num_warps": 8, "ROWS": 8}]
    else:
        out += [{"BLOCK_M": 1, "num_warps": 4, "ROWS": 1}, {"BLOCK_M": 1, "num_warps": 16, "ROWS": 1},
                {"BLOCK_M": 1, "num_warps": 4, "ROWS": 2}, {"BLOCK_M": 2, "num_warps": 8, "ROWS": 2}]
    seen, unique = set(), []
    for c in out:
        key = tuple(sorted(c.items()))
        if key not in seen and c["BLOCK_M"] >= 1:
            seen.add(key)
            unique.append(c)
    return unique


def bwd_kernel_shapes(n: int) -> list[dict]:
    """(BLOCK_M, num_warps) of the backward to compile at width n, the current default first."""
    base = kernels.launch_config(n, ESIZE, "bwd")
    bm, w = base["BLOCK_M"], base["num_warps"]
    out = [{"BLOCK_M": bm, "num_warps": w}]
    if n <= 512:
        out += [{"BLOCK_M": bm, "num_warps": 4}, {"BLOCK_M": 2 * bm, "num_warps": 8}, {"BLOCK_M": bm // 2, "num_warps": 4}]
    elif n <= 2048:
        out += [{"BLOCK_M": bm, "num_warps": 16}, {"BLOCK_M": bm, "num_warps": 4}, {"BLOCK_M": 1, "num_warps": 4}]
    else:
        out += [{"BLOCK_M": 1, "num_warps": 16}, {"BLOCK_M": 1, "num_warps": 4}, {"BLOCK_M": 2, "num_warps": 16}]
    return out


BWD_RUNTIME = [  # no recompilation: how many programs share the partial sums, which reduction
    {"programs_per_sm": 4, "reduce": "torch"},
    {"programs_per_sm": 4, "reduce": "triton"},
    {"programs_per_sm": 2, "reduce": "triton"},
    {"programs_per_sm": 1, "reduce": "triton"},
    {"programs_per_sm": 8, "reduce": "triton"},
    {"programs_per_sm": 2, "reduce": "torch"},
]


def label(setting: dict) -> str:
    short = {"BLOCK_M": "bm", "num_warps": "w", "ROWS": "rows", "programs_per_sm": "p/sm", "reduce": "red"}
    return " ".join(f"{short[k]}={v}" for k, v in setting.items())


# --------------------------------------------------------------------------- measuring


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def timing_row(name: str, t: bench.Timing, nbytes: int, ref_ms: float | None, copy_gbps: float) -> dict:
    row = {"candidate": name, "ms": t.median_ms, "p20": t.p20_ms, "p80": t.p80_ms, "reps": t.reps,
           "GB/s": bench.gbps(nbytes, t.median_ms), "of copy": bench.gbps(nbytes, t.median_ms) / copy_gbps}
    if ref_ms is not None:
        row["speed vs ref"] = ref_ms / t.median_ms
    return row


def measure_group(ref_name: str, ref_fn, candidates: list[tuple[str, dict, object]], nbytes, copy_gbps, device):
    """Compile (warm) each candidate under the time guard, then time all of them by turns with the reference."""
    fns = {ref_name: ref_fn}
    settings = {}
    skipped = []
    for name, setting, fn in candidates:  # each was run once (compiled) by its correctness check
        fns[name] = fn
        settings[name] = setting
    if len(fns) == 1:
        return [], skipped
    timings = bench.do_bench_interleaved(fns, device=device, reps=REPS, warmup=1 if device.type == "cuda" else 0,
                                         flush_l2=device.type == "cuda")
    ref_ms = timings[ref_name].median_ms
    rows = [timing_row(ref_name, timings[ref_name], nbytes, None, copy_gbps)]
    for name, setting in settings.items():
        row = timing_row(name, timings[name], nbytes, ref_ms, copy_gbps)
        row["setting"] = setting
        rows.append(row)
    return rows, skipped


_INPUTS: dict = {}


def make_inputs(m, n, device, seed=0):
    """x (offset mean, spread 3), w, b, dy in bf16, drawn on the device once per shape."""
    if (m, n) not in _INPUTS:
        _INPUTS.clear()  # one shape at a time on the device
        g = torch.Generator(device=device).manual_seed(seed)
        x = (torch.randn(m, n, generator=g, device=device) * 3 + 5).to(DTYPE)
        w = (1 + 0.5 * torch.randn(n, generator=g, device=device)).to(DTYPE)
        b = torch.randn(n, generator=g, device=device).to(DTYPE)
        dy = torch.randn(m, n, generator=g, device=device).to(DTYPE)
        _INPUTS[(m, n)] = (x, w, b, dy)
    return _INPUTS[(m, n)]


def with_setting(direction, n, setting, fn):
    key = (direction, n, ESIZE)

    def run():
        kernels.OVERRIDES[key] = setting
        return fn()

    return run


def sweep_forward(m, n, device, copy_gbps, result):
    x, w, b, _ = make_inputs(m, n, device)
    y_ref = F.layer_norm(x, (n,), w, b, EPS)
    cands = []
    for setting in fwd_candidates(n):
        check_time()
        run = with_setting("fwd", n, setting, lambda: kernels.layer_norm_forward(x, w, b, EPS))
        err = rel_err(run()[0], y_ref)
        if err > 2.0**-6:
            result["wrong"].append({"direction": "fwd", "shape": [m, n], "setting": setting, "rel_err": err})
            continue
        cands.append((label(setting), setting, run))

    def ref():
        with torch.no_grad():
            F.layer_norm(x, (n,), w, b, EPS)

    rows, skipped = measure_group("F.layer_norm", ref, cands, bench.layer_norm_bytes(m, n, DTYPE), copy_gbps, device)
    kernels.OVERRIDES.pop(("fwd", n, ESIZE), None)
    return rows, skipped


def sweep_backward(m, n, device, copy_gbps, result):
    x, w, b, dy = make_inputs(m, n, device)
    _, mean, rstd = kernels.layer_norm_forward(x, w, b, EPS)
    _, mean_f, rstd_f = torch.ops.aten.native_layer_norm(x, [n], w, b, EPS)
    dx_ref, dw_ref, db_ref = torch.ops.aten.native_layer_norm_backward(dy, x, [n], mean_f, rstd_f, w, b, [True, True, True])
    cands = []
    shapes = bwd_kernel_shapes(n)[:2] if ARGS.smoke else bwd_kernel_shapes(n)
    runtimes = BWD_RUNTIME[:3] if ARGS.smoke else BWD_RUNTIME  # the smoke run: both reductions
    for shape in shapes:
        for runtime_setting in runtimes:
            check_time()
            setting = {**shape, **runtime_setting}
            run = with_setting("bwd", n, setting, lambda: kernels.layer_norm_backward(dy, x, w, mean, rstd, True))
            dx, dw, db = run()
            err = max(rel_err(dx, dx_ref), rel_err(dw, dw_ref), rel_err(db, db_ref))
            if err > 2.0**-5:
                result["wrong"].append({"direction": "bwd", "shape": [m, n], "setting": setting, "rel_err": err})
                continue
            cands.append((label(setting), setting, run))

    def ref():
        torch.ops.aten.native_layer_norm_backward(dy, x, [n], mean_f, rstd_f, w, b, [True, True, True])

    rows, skipped = measure_group("aten backward", ref, cands, bench.layer_norm_bytes(m, n, DTYPE, "backward"),
                                  copy_gbps, device)
    kernels.OVERRIDES.pop(("bwd", n, ESIZE), None)
    return rows, skipped


def sweep_end_to_end(m, n, device, copy_gbps, best_fwd, best_bwd):
    """Forward + backward through autograd (the page's goal) with the current defaults and the best settings."""
    x, w, b, dy = make_inputs(m, n, device)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))

    def both(fn):
        def run():
            xg.grad = wg.grad = bg.grad = None
            fn(xg, n, wg, bg).backward(dy)

        return run

    def ours(settings):
        def fn(*a):
            for direction, s in settings.items():
                kernels.OVERRIDES[(direction, n, ESIZE)] = s
            return kernels.layer_norm(*a)

        return fn

    def defaults(*a):
        kernels.OVERRIDES.pop(("fwd", n, ESIZE), None)
        kernels.OVERRIDES.pop(("bwd", n, ESIZE), None)
        return kernels.layer_norm(*a)

    cands = [("ours, defaults", {}, both(defaults))]
    best = {k: v for k, v in (("fwd", best_fwd), ("bwd", best_bwd)) if v is not None}
    if best:
        cands.append(("ours, best", best, both(ours(best))))
    rows, skipped = measure_group("F.layer_norm", both(lambda x_, n_, w_, b_: F.layer_norm(x_, (n_,), w_, b_, EPS)),
                                  cands, bench.layer_norm_bytes(m, n, DTYPE, "fwd+bwd"), copy_gbps, device)
    kernels.OVERRIDES.pop(("fwd", n, ESIZE), None)
    kernels.OVERRIDES.pop(("bwd", n, ESIZE), None)
    return rows, skipped


def best_of(rows):
    timed = [r for r in rows if "setting" in r]
    return min(timed, key=lambda r: r["ms"]) if timed else None


def print_rows(title, rows):
    if not rows:
        return
    print(f"\n{title}")
    cols = ["candidate", "ms", "p20", "p80", "GB/s", "of copy", "speed vs ref"]
    print(bench.format_table(rows, cols, floatfmt=".4g"))


# --------------------------------------------------------------------------- main


def main():
    global REPS
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reason = kernels.unavailable_reason(device)
    if reason is not None:
        raise SystemExit(f"the Triton LayerNorm cannot run on {device}: {reason}"
                         + ("" if ARGS.smoke else " (on a machine without CUDA, run with --smoke)"))
    if device.type != "cuda" and not ARGS.smoke:
        raise SystemExit("no CUDA GPU: run with --smoke to check the sweep on the CPU")
    REPS = ARGS.reps or (2 if ARGS.smoke else 15)
    shapes = [(40, 256), (6, 1024), (3, 4096)] if ARGS.smoke else [(32768, 256), (65536, 1024), (16384, 4096)]
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)",
        "torch": torch.__version__, "triton": getattr(kernels.triton, "__version__", None), "dtype": "bfloat16",
        "smoke": ARGS.smoke, "budget_s": ARGS.budget_s, "reps": REPS, "shapes": {}, "wrong": [], "skipped": [],
        "stopped_early": False,
    }
    kernels.OVERRIDES.clear()
    nbytes = None if device.type == "cuda" else 4 * 1024**2
    copy_gbps, t_copy = bench.copy_bandwidth(device, nbytes=nbytes, warmup_ms=5, rep_ms=20 if device.type == "cuda" else 5)
    result["copy_gbps"] = copy_gbps
    print(f"{result['device']}: copy {copy_gbps:,.0f} GB/s ({t_copy}); torch {torch.__version__}, "
          f"triton {result['triton']}; {REPS} reps per candidate, budget {ARGS.budget_s:.0f} s")

    def record(shape, part, rows, skipped):
        key = f"{shape[0]}x{shape[1]}"
        result["shapes"].setdefault(key, {})[part] = rows
        result["skipped"] += [{"shape": key, "part": part, "candidate": s} for s in skipped]
        print_rows(f"{key} bf16 {part} ({elapsed():.1f} s)", rows)

    # Backward first (the weak part), then forward, then the end-to-end check of the winners.
    try:
        for part, fn in (("bwd", sweep_backward), ("fwd", sweep_forward)):
            for m, n in shapes:
                rows, skipped = fn(m, n, device, copy_gbps, result)
                record((m, n), part, rows, skipped)
        for m, n in shapes:
            parts = result["shapes"].get(f"{m}x{n}", {})
            bf, bb = best_of(parts.get("fwd", [])), best_of(parts.get("bwd", []))
            rows, skipped = sweep_end_to_end(m, n, device, copy_gbps, bf and bf["setting"], bb and bb["setting"])
            record((m, n), "fwd+bwd (autograd)", rows, skipped)
    except OutOfTime:
        result["stopped_early"] = True
        print(f"\nstopped at {elapsed():.1f} s (budget {ARGS.budget_s:.0f} s); writing what was measured")
    finally:
        kernels.OVERRIDES.clear()

    tuned = {}
    for key, parts in result["shapes"].items():
        n = int(key.split("x")[1])
        for direction in ("fwd", "bwd"):
            best = best_of(parts.get(direction, []))
            if best is not None:
                tuned[(direction, n, ESIZE)] = best["setting"]
                ref = next(r for r in parts[direction] if "setting" not in r)
                heur = next((r for r in parts[direction] if "setting" in r), None)
                print(f"best {direction} {key}: {best['candidate']}: {best['ms'] * 1e3:,.1f} us, "
                      f"{best['of copy']:.3f} of copy, {best['speed vs ref']:.2f}x {ref['candidate']}"
                      + (f", {heur['ms'] / best['ms']:.2f}x the defaults" if heur else ""))
    result["tuned"] = [{"direction": d, "n": n, "element_size": e, "setting": s} for (d, n, e), s in tuned.items()]
    result["elapsed_s"] = elapsed()
    os.makedirs(os.path.dirname(os.path.abspath(ARGS.out)), exist_ok=True)
    with open(ARGS.out, "w") as f:
        json.dump(result, f, indent=1)
    if result["wrong"]:
        print(f"\n{len(result['wrong'])} candidate(s) computed a wrong result and were left out: {result['wrong']}")
    print(f"\nwrote {ARGS.out} after {elapsed():.1f} s" + (" (stopped early)" if result["stopped_early"] else ""))
    print("# paste into src/resnorm/kernels.py (measured on "
          f"{result['device']}, torch {torch.__version__}, triton {result['triton']}):")
    print("TUNED: dict[tuple[str, int, int], dict] = {")
    for (d, n, e), s in tuned.items():
        print(f"    ({d!r}, {n}, {e}): {s!r},")
    print("}")
    if ARGS.write_kernels and tuned:
        write_tuned(ARGS.write_kernels, tuned, f"{result['device']}, torch {torch.__version__}, "
                    f"triton {result['triton']}")
        print(f"wrote the TUNED table into {ARGS.write_kernels}")
    return 1 if result["wrong"] else 0


def write_tuned(path: str, tuned: dict, where: str) -> None:
    """Replace the ``TUNED = {...}`` table of kernels.py with ``tuned`` (so a page run next uses it)."""
    with open(path) as f:
        lines = f.read().split("\n")
    head = "TUNED: dict[tuple[str, int, int], dict] = {"
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    end = start if lines[start].rstrip().endswith("{}") else next(
        i for i in range(start + 1, len(lines)) if lines[i] == "}")
    block = [f"# measured by tools/kernel_sweep.py on {where}", head]
    block += [f"    ({d!r}, {n}, {e}): {s!r}," for (d, n, e), s in tuned.items()] + ["}"]
    if start > 0 and lines[start - 1].startswith("# measured by tools/kernel_sweep.py"):
        start -= 1
    lines[start:end + 1] = block
    with open(path, "w") as f:
        f.write("\n".join(lines))


REPS = 15

if __name__ == "__main__":
    sys.exit(main())
