"""Size the experiments chapter's GPU plan: step times with and without CUDA graphs, and how long runs must be.

A developer's tool, not part of the book: it prints what the plan in ``book/experiments.ipynb``
is sized from, and writes the same as JSON (``--out``). Phase 1 times one run of each budget alone
(the loop's speed probe: eager steps, then CUDA-graph steps, same run). Phase 2 trains a few grid
and depth runs side by side in worker processes, long enough to see exact match rise, and reports
their throughput together. ``--smoke`` runs it all at toy size on a CPU (the graph path falls back).

    python tools/gpu_calibrate.py --out calib.json [--smoke] [--steps 1500] [--workers 4]
    python tools/gpu_calibrate.py --check-capture   (about 30 s: does the first capture of a process work?)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from resnorm import experiments as E
from resnorm import runtime


def budgets(smoke: bool, steps: int) -> dict[str, E.Budget]:
    common = dict(pad_multiple=32, fast=True, cuda_graphs=True, eval_examples=500, val_batches=2, n_test=2000,
                  log_every=25, steps=steps, eval_interval=500)
    if smoke:
        tiny = dict(d_model=16, n_heads=2, d_ff=32, batch_size=16)
        common.update(eval_examples=16, steps=min(steps, 40), log_every=5, eval_interval=20)
        return {"grid": E.Budget(**tiny, **common), "deep": E.Budget(**tiny, **common),
                "norms": E.Budget(**tiny, **common)}
    return {
        # A batch of 256 takes about 8 ms to generate in one Python process: a graphed step is faster.
        "grid": E.Budget(d_model=128, n_heads=4, d_ff=512, batch_size=256, data_workers=2, **common),
        "deep": E.Budget(d_model=128, n_heads=4, d_ff=512, batch_size=256, data_workers=2, **common),
        "norms": E.Budget(d_model=256, n_heads=8, d_ff=1024, batch_size=512, data_workers=4, **common),
    }


def save(report: dict, path: str) -> None:
    if path:  # after every phase, so that a run cut short keeps what it measured
        with open(path, "w") as f:
            json.dump(report, f, indent=1, default=str)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--grid-layers", type=int, default=6)
    ap.add_argument("--deep-layers", type=int, default=12)
    ap.add_argument("--check-capture", action="store_true",
                    help="stop after phase 0; exit 1 unless the first capture of a fresh process was kept")
    args = ap.parse_args()
    start = time.perf_counter()
    b = budgets(args.smoke, args.steps)
    layers = {"grid": 1 if args.smoke else args.grid_layers, "deep": 2 if args.smoke else args.deep_layers,
              "norms": 1 if args.smoke else 3}
    report: dict = {"device": runtime.device_name(), "phase1": [], "phase2": []}
    data = E.Data(b["grid"])
    norms_data = E.Data(b["norms"])

    # Phase 0: graphed steps train like eager ones (same seed and batches; bf16 rounding apart).
    from resnorm import train

    tiny = dict(d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=64, n_test=70,
                eval_examples=16, progress=False, steps=60, pad_multiple=32, log_interval=5, eval_interval=60)
    task = train.TaskData.build(train.make_config("quick", **tiny))
    eager = train.train(train.make_config("quick", **tiny), data=task)
    graphed = train.train(train.make_config("quick", **tiny, cuda_graphs=True), data=task)
    a, g = [r["loss"] for r in eager.log], [r["loss"] for r in graphed.log]
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, g))
    report["phase0"] = {"speed": graphed.compile_report, "max_relative_loss_difference": worst}
    print(f"phase 0: graphed vs eager losses differ by at most {worst:.2e} (relative); "
          f"{graphed.compile_report}", flush=True)

    # Phase 0b: the page's conditions. Each run is the first of a fresh worker process, with a
    # DataLoader whose pin-memory thread stages batches during the capture (on the H200, with
    # captures in torch's default "global" mode, every such first capture failed).
    first_runs = [E.Job(E.RunSpec(n_layers=layers["grid"], lr=1e-3, warmup_steps=20),
                        b["grid"].replace(steps=min(b["grid"].steps, 80), eval_examples=0), seed=s) for s in (0, 1)]
    results = E.run_jobs(first_runs, data, workers=2)
    report["phase0_first_runs"] = [dict(r.speed, error=r.error) for r in results]
    for r in results:
        print(f"phase 0b: first run of a fresh worker, seed {r.seed}: {r.speed.get('decision')} "
              f"({r.speed.get('capture_mode')}; errors {r.speed.get('capture_errors', [])})", flush=True)
    save(report, args.out)
    if args.check_capture:
        kept = [graphed.compile_report] + [r.speed for r in results]
        raise SystemExit(0 if all(k.get("decision") == "cuda graphs" for k in kept) else 1)

    # Phase 1: each budget alone, 150 steps: the probe times eager and graphed steps of one run.
    for name, budget in b.items():
        short = budget.replace(steps=min(budget.steps, 150), eval_examples=0)
        spec = E.RunSpec(n_layers=layers[name], lr=1e-3, warmup_steps=50)
        for fast in (True, False) if name == "grid" else (True,):
            t0 = time.perf_counter()
            r = E.train_run(spec, short.replace(fast=fast), norms_data if name == "norms" else data, seed=0)
            row = {"budget": name, "fast": fast, "layers": layers[name], "d_model": budget.d_model,
                   "batch": budget.batch_size, "steps": r.steps_done, "wall_s": round(time.perf_counter() - t0, 1),
                   **{k: r.speed.get(k) for k in ("eager_ms_per_step", "graphed_ms_per_step", "capture_s",
                                                   "decision")}}
            report["phase1"].append(row)
            print("phase 1:", row, flush=True)
            save(report, args.out)

    # Phase 2: runs side by side, long enough to see whether and when exact match rises.
    W = 200
    specs = [
        ("grid", E.RunSpec(name="Post-LN lr3e-3 no warmup no clip", norm_first=False, n_layers=layers["grid"],
                           lr=3e-3, warmup_steps=0, grad_clip=None)),
        ("grid", E.RunSpec(name="Post-LN lr3e-3 warmup no clip", norm_first=False, n_layers=layers["grid"],
                           lr=3e-3, warmup_steps=W, grad_clip=None)),
        ("grid", E.RunSpec(name="Pre-LN lr3e-3 no warmup no clip", norm_first=True, n_layers=layers["grid"],
                           lr=3e-3, warmup_steps=0, grad_clip=None)),
        ("deep", E.RunSpec(name="Post-LN deep lr1e-3 warmup", norm_first=False, n_layers=layers["deep"],
                           lr=1e-3, warmup_steps=W)),
    ]
    jobs = [E.Job(spec, b[name], 0) for name, spec in specs][: max(1, args.workers)]
    t0 = time.perf_counter()
    results = E.run_jobs(jobs, data, workers=args.workers, progress=True)
    wall = time.perf_counter() - t0
    for (name, spec), r in zip(specs, results):
        row = {"run": spec.name, "budget": name, "error": r.error, "steps": r.steps_done, "train_s": round(r.train_s, 1),
               "ms_per_step": round(r.ms_per_step, 2), "final_loss": r.final_loss, "exact_match": r.exact_match,
               "diverged": r.diverged, "speed": r.speed, "em_curve": r.em_curve, "curve": r.curve[:: max(1, len(r.curve) // 12)]}
        report["phase2"].append(row)
        print("phase 2:", json.dumps(row), flush=True)
    report["phase2_wall_s"] = round(wall, 1)
    report["total_s"] = round(time.perf_counter() - start, 1)
    print(f"phase 2: {len(jobs)} runs side by side in {wall:.1f} s; total {report['total_s']} s", flush=True)
    save(report, args.out)


if __name__ == "__main__":
    main()
