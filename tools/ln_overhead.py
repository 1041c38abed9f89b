"""Where does a Triton LayerNorm call spend its time outside the kernels? (issue #15)

The kernel sweep (tools/results/kernel_sweep_h200.json) timed our kernels alone faster than
PyTorch's, but a forward plus backward through autograd at 32768 x 256 took 0.59 ms against
F.layer_norm's 0.25 ms: about 0.5 ms per call outside the kernels. This script splits that
host-side time, in about 20 s on a GPU:

1. wall time per call, the GPU kept busy (no synchronization inside the loop), of: the forward
   kernel launched directly (the compiled kernel, without Triton's JIT dispatch, where this
   Triton allows it); a bare launch of the forward kernel (through the dispatch);
   ``kernels.layer_norm_forward``; ``kernels.layer_norm_backward`` called from the main thread
   (through autograd it runs on autograd's device thread); ``kernels.layer_norm`` under
   ``no_grad``; forward plus backward through autograd, with the backward on autograd's device
   thread (as in training) and in the calling thread; the same for ``F.layer_norm``; and a
   Python autograd Function that launches nothing (autograd's own cost, the gradient
   accumulation included);
2. the Python functions that cost the most (cProfile, by own time), over forward plus backward
   (the backward in the calling thread, where cProfile sees it);
3. forward plus backward captured in a CUDA graph and replayed, ours and ``F.layer_norm``, at
   32768 x 256 and 65536 x 1024 (what a call costs with no host work per call);
4. ``torch.profiler``'s CPU-side table of the same calls (ATen ops, launches, autograd).

    python3 tools/ln_overhead.py --out "$OUT/ln_overhead.json"      (a CUDA GPU)
    python3 tools/ln_overhead.py --smoke --out /tmp/ln.json          (CPU, Triton's interpreter)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--smoke", action="store_true")
ap.add_argument("--calls", type=int, default=200)
ARGS = ap.parse_args()
if ARGS.smoke:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from resnorm import kernels  # noqa: E402


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() and not ARGS.smoke else "cpu")
    reason = kernels.unavailable_reason(device)
    if reason is not None:
        raise SystemExit(f"the Triton LayerNorm cannot run on {device}: {reason}")
    m, n = (64, 256) if ARGS.smoke else (32768, 256)
    dtype = torch.bfloat16
    calls = 5 if ARGS.smoke else ARGS.calls
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, n, generator=g).to(device, dtype).requires_grad_()
    w = torch.ones(n, device=device, dtype=dtype, requires_grad=True)
    b = torch.zeros(n, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(m, n, generator=g).to(device, dtype)
    x2 = x.detach()
    cfg = kernels.launch_config(n, x2.element_size())
    y = torch.empty_like(x2)
    stats = torch.empty((2, m), dtype=torch.float32, device=device)
    fwd = kernels._kernels()["fwd"]
    grid = (triton_cdiv(m, cfg["ROWS"]),)

    def bare_launch():
        fwd[grid](x2, y, w, b, stats[0], stats[1], m, n, x2.stride(0), y.stride(0), 1e-5,
                  HAS_WEIGHT=True, HAS_BIAS=True, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                  ROWS=cfg["ROWS"], num_warps=cfg["num_warps"])

    # Triton's JIT dispatch (argument binding, specialization, cache lookup) runs at every
    # launch; JITFunction.run returns the compiled kernel, which can be launched directly. If
    # this Triton's launcher takes other arguments, or the result differs, the case is skipped.
    direct_error = None
    try:
        compiled = fwd[grid](x2, y, w, b, stats[0], stats[1], m, n, x2.stride(0), y.stride(0), 1e-5,
                             HAS_WEIGHT=True, HAS_BIAS=True, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                             ROWS=cfg["ROWS"], num_warps=cfg["num_warps"])
        expected = y.clone()
        y.zero_()
        runner = compiled[grid]  # every parameter in order, the compile-time constants included
        args = (x2, y, w, b, stats[0], stats[1], m, n, x2.stride(0), y.stride(0), 1e-5,
                True, True, cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["ROWS"])
        runner(*args)
        if not torch.equal(y, expected):
            raise RuntimeError("the direct launch computed another result")
    except Exception as err:  # noqa: BLE001 - a diagnostic: say why and go on
        direct_error = f"{type(err).__name__}: {str(err)[:200]}"

    def direct_launch():
        runner(*args)

    class NoOp(torch.autograd.Function):  # autograd's cost for a Python Function, no kernels of ours
        @staticmethod
        def forward(ctx, x, w, b):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            return g, None, None

    def noop_function_fwd_bwd():
        NoOp.apply(x, w, b).backward(dy)

    def ours_forward_rows():
        kernels.layer_norm_forward(x2, w.detach(), b.detach(), 1e-5)

    _, saved_mean, saved_rstd = kernels.layer_norm_forward(x2, w.detach(), b.detach(), 1e-5)

    def ours_backward_rows():  # the backward's launches from this (the main) thread, no autograd
        kernels.layer_norm_backward(dy, x2, w.detach(), saved_mean, saved_rstd, True)

    def ours_no_grad():
        with torch.no_grad():
            kernels.layer_norm(x, (n,), w, b)

    def ours_fwd_bwd():
        kernels.layer_norm(x, (n,), w, b).backward(dy)

    def ours_fwd_bwd_one_thread():  # the backward in this thread, not on autograd's device thread
        with torch.autograd.set_multithreading_enabled(False):
            kernels.layer_norm(x, (n,), w, b).backward(dy)

    def torch_fwd_bwd():
        F.layer_norm(x, (n,), w, b).backward(dy)

    cases = {"bare forward launch": bare_launch, "kernels.layer_norm_forward": ours_forward_rows,
             "kernels.layer_norm_backward": ours_backward_rows, "ours, no_grad": ours_no_grad, "ours, forward + backward": ours_fwd_bwd,
             "ours, forward + backward, one thread": ours_fwd_bwd_one_thread,
             "F.layer_norm, forward + backward": torch_fwd_bwd,
             "no-op Function, forward + backward": noop_function_fwd_bwd}
    if direct_error is None:
        cases = {"direct forward launch (compiled kernel)": direct_launch, **cases}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
              "torch": torch.__version__, "shape": [m, n], "dtype": "bfloat16", "calls": calls, "us_per_call": {},
              "direct_launch_error": direct_error}
    for _ in range(2):  # two rounds, taking turns: the second is reported
        for name, fn in cases.items():
            for _ in range(3):
                fn()
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            host = time.perf_counter() - t0  # the CPU's time to issue the calls
            sync()
            total = time.perf_counter() - t0
            result["us_per_call"][name] = {"host_us": round(1e6 * host / calls, 1),
                                           "with_gpu_us": round(1e6 * total / calls, 1)}
    print(f"{result['device']}, {m} x {n} bf16, {calls} calls each (host: time to issue; with GPU: until done)")
    if direct_error is not None:
        print(f"  (no direct launch: {direct_error})")
    for name, t in result["us_per_call"].items():
        print(f"  {name:<40} host {t['host_us']:>8.1f} us   with GPU {t['with_gpu_us']:>8.1f} us")

    # cProfile sees only the thread that enables it: the backward runs in this thread here.
    result["graph_replay"] = graph_replay(device, dtype, calls)

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        ours_fwd_bwd_one_thread()
    prof.disable()
    sync()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
    result["cprofile_tottime_top15"] = text.getvalue()
    print(text.getvalue()[-3500:])

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as p:
        for _ in range(min(calls, 50)):
            ours_fwd_bwd()
        sync()
    table = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    result["torch_profiler_top15"] = table
    print(table)
    with open(ARGS.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {ARGS.out}")
    return 0


def graph_replay(device, dtype, calls: int) -> dict:
    """Forward plus backward captured once in a CUDA graph, then replayed: the per-call cost gone.

    What our LayerNorm and F.layer_norm cost when nothing runs on the host per call (as in a
    training step replayed from CUDA graphs), at the two goal shapes of forward plus backward.
    The gradients come from ``torch.autograd.grad`` (outputs of the graph, not accumulated).
    """
    if device.type != "cuda":
        return {"skipped": "CUDA graphs need a CUDA GPU"}
    out = {}
    for m, n in ((32768, 256), (65536, 1024)):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(m, n, generator=g).to(device, dtype).requires_grad_()
        w = torch.randn(n, generator=g).to(device, dtype).requires_grad_()
        b = torch.randn(n, generator=g).to(device, dtype).requires_grad_()
        dy = torch.randn(m, n, generator=g).to(device, dtype)
        row = {}
        for name, impl in (("ours", kernels.layer_norm), ("F.layer_norm", F.layer_norm)):
            def fwd_bwd(impl=impl):
                return torch.autograd.grad(impl(x, (n,), w, b), (x, w, b), dy)
            try:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm up off the default stream, as torch's docs do
                    for _ in range(3):
                        fwd_bwd()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    static = fwd_bwd()
                expected = fwd_bwd()
                graph.replay()
                torch.cuda.synchronize()
                same = all(torch.allclose(a.float(), e.float(), rtol=1e-2, atol=1e-2) for a, e in zip(static, expected))
                for _ in range(3):
                    graph.replay()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(calls):
                    graph.replay()
                torch.cuda.synchronize()
                row[name] = {"us_per_replay": round(1e6 * (time.perf_counter() - t0) / calls, 1),
                             "replay_matches_eager": same}
                del graph, static, expected
            except Exception as err:  # noqa: BLE001 - a diagnostic: say why and go on
                row[name] = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
        if all("us_per_replay" in v for v in row.values()):
            row["speed_ours_over_F"] = round(row["F.layer_norm"]["us_per_replay"] / row["ours"]["us_per_replay"], 3)
        out[f"{m}x{n}"] = row
        print(f"replayed from a CUDA graph, forward + backward, {m} x {n} bf16: {row}")
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


if __name__ == "__main__":
    sys.exit(main())
