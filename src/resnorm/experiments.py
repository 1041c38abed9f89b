"""Experiment runners for the chapter on residuals and LayerNorm inside the Transformer.

A run is one :class:`RunSpec` (placement, norm, residual rule, initialization, depth, learning
rate, warmup, seed) trained on a :class:`Budget` (model width, batch, steps or seconds) by the
book's one training loop, :func:`resnorm.train.train`, through its hooks: per-layer gradient
norms after the backward pass, the size of the model's change per update, and the loss of every
step. :func:`sweep` runs specs x seeds, one after another or in several processes that share
one GPU (small models leave most of a GPU idle: a step of a 6+6-layer model with d_model 128 is
bound by the CPU's kernel launches, so several runs side by side use the GPU better than one).
:func:`summarize` and :func:`paired_difference` turn the runs into means with 95 % confidence
intervals over seeds.

Every run with the same seed trains on the same stream of batches, so two configurations of a
comparison differ in the model only, not in the data order.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from . import runtime

# ----------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class RunSpec:
    """One configuration of the model and its optimizer (everything except the budget)."""

    name: str = ""
    norm_first: bool = True
    norm: str = "layernorm"
    residual: str = "standard"
    init: str = "xavier"
    n_layers: int = 2  # encoder layers = decoder layers
    lr: float = 1e-3
    warmup_steps: int = 0
    final_norm: bool = True  # Pre-LN only: keep the norm after each stack
    grad_clip: float | None = 1.0  # None: no clipping (the training chapter clips at 1.0)

    def __post_init__(self):
        if self.n_layers <= 0:
            raise ValueError(f"n_layers must be positive, got {self.n_layers}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if not self.final_norm and not self.norm_first:
            raise ValueError("final_norm=False only applies to Pre-LN (norm_first=True): Post-LN has no final norm")

    @property
    def label(self) -> str:
        return self.name or describe_spec(self)

    def replace(self, **changes) -> "RunSpec":
        return dataclasses.replace(self, **changes)


def describe_spec(spec: RunSpec) -> str:
    """A short readable label: ``Pre-LN L6 lr1e-03 warmup`` and the variant, if any."""
    place = "Pre-LN" if spec.norm_first else "Post-LN"
    parts = [place]
    if spec.norm != "layernorm":
        parts.append(spec.norm)
    if spec.residual != "standard":
        parts.append(f"res={spec.residual}")
    if spec.init != "xavier":
        parts.append(f"init={spec.init}")
    if not spec.final_norm:
        parts.append("no final norm")
    parts += [f"L{spec.n_layers}", f"lr{spec.lr:.0e}", "warmup" if spec.warmup_steps else "no warmup"]
    return " ".join(parts)


@dataclass(frozen=True)
class Budget:
    """Model width and training length, the same for every run of a comparison.

    ``time_s > 0`` trains each run for that many seconds (the learning-rate schedule follows the
    fraction of time spent, warmup is counted in steps), at most ``steps`` steps; ``time_s = 0``
    trains exactly ``steps`` steps. ``eval_examples = 0`` skips the exact-match evaluation.
    """

    steps: int = 100
    batch_size: int = 64
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 128
    eval_examples: int = 100  # validation expressions greedily decoded for exact match (0: skip)
    val_batches: int = 2  # teacher-forced validation batches for loss and token accuracy
    log_every: int = 5
    n_test: int = 2000  # held-out expressions in the task's split
    time_s: float = 0.0
    pad_multiple: int = 1
    fast: bool = False
    data_workers: int = 0
    # Replay each step's forward and backward from CUDA graphs (GPU only; see TrainConfig.cuda_graphs):
    # a small model's step is bound by kernel launches, and a graph launches them all at once.
    cuda_graphs: bool = False
    eval_interval: int = 0  # > 0: also measure exact match every this many steps (RunResult.em_curve)

    def __post_init__(self):
        for name in ("steps", "batch_size", "d_model", "n_heads", "d_ff", "log_every", "n_test", "val_batches",
                     "pad_multiple"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Budget.{name} must be positive, got {getattr(self, name)}")
        if self.eval_examples < 0 or self.time_s < 0 or self.data_workers < 0 or self.eval_interval < 0:
            raise ValueError("Budget.eval_examples, time_s, data_workers and eval_interval must be >= 0")
        if self.d_model % self.n_heads:
            raise ValueError(f"Budget.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")

    def replace(self, **changes) -> "Budget":
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- data and model


class Data:
    """The task's vocabularies and held-out split, plus cached training and validation batches.

    Batches are generated once per seed and reused by every run of that seed: the runs of a
    comparison then see identical data in identical order.
    """

    def __init__(self, budget: Budget, split_seed: int = 0):
        from . import train

        cfg = train.make_config("quick", n_test=budget.n_test, seed=split_seed, batch_size=budget.batch_size)
        self.task = train.TaskData.build(cfg)
        self.src_vocab, self.tgt_vocab = self.task.src_vocab, self.task.tgt_vocab
        self.budget = budget
        self._train: dict[int, list] = {}
        from . import tasks

        # Validation batches come from the held-out validation set (the training stream never
        # yields a held-out expression); it is sorted by category, so take a random sample.

        valid = self.task.val_sample(budget.val_batches * budget.batch_size)
        self.val_batches = []
        for i in range(budget.val_batches):
            chunk = valid[i * budget.batch_size:(i + 1) * budget.batch_size]
            if not chunk:
                break
            b = tasks.encode_batch(chunk, self.src_vocab, self.tgt_vocab)
            self.val_batches.append((b.src, b.tgt_in, b.tgt_out, b.src_key_padding_mask, b.tgt_key_padding_mask))
        self.eval_examples = self.task.val_sample(budget.eval_examples) if budget.eval_examples else []

    def train_batches(self, seed: int, steps: int) -> list:
        have = self._train.get(seed, [])
        if len(have) < steps:
            stream = self.task.stream(self.budget.batch_size, seed=seed + 1)
            have = [next(stream) for _ in range(steps)]
            self._train[seed] = have
        return have[:steps]


def train_config(spec: RunSpec, budget: Budget, seed: int = 0):
    """The :class:`resnorm.train.TrainConfig` of one run: the training chapter's recipe with this spec and budget."""
    from . import train

    return train.make_config(
        "quick", d_model=budget.d_model, n_heads=budget.n_heads, d_ff=budget.d_ff, n_encoder_layers=spec.n_layers,
        n_decoder_layers=spec.n_layers, dropout=0.0, norm_first=spec.norm_first, norm=spec.norm,
        residual=spec.residual, init=spec.init, final_norm=spec.final_norm, fast=budget.fast, n_test=budget.n_test,
        batch_size=budget.batch_size, pad_multiple=budget.pad_multiple, steps=budget.steps,
        time_budget_s=budget.time_s, lr=spec.lr, warmup_steps=spec.warmup_steps, schedule="cosine",
        grad_clip=0.0 if spec.grad_clip is None else spec.grad_clip, seed=seed, log_interval=budget.log_every,
        eval_interval=budget.eval_interval or 10**9, eval_examples=budget.eval_examples, data_workers=budget.data_workers,
        cuda_graphs=budget.cuda_graphs, progress=False)


def build_model(spec: RunSpec, budget: Budget, data: Data, seed: int = 0):
    """The Transformer that ``spec`` describes, seeded: the very model :func:`train_run` starts from."""
    from . import train

    return train.init_model(train_config(spec, budget, seed), data.task)[0]


def ffn_out_layers(model) -> dict[str, list[str]]:
    """Names of the FFN's second linear layer (W2) in every encoder and decoder layer, bottom to top.

    Xiong et al. (2020, Fig. 3) plot the gradient norm of this matrix per layer.
    """
    return {
        "encoder": [f"encoder.layers.{i}.ff.linear2" for i in range(len(model.encoder.layers))],
        "decoder": [f"decoder.layers.{i}.ff.linear2" for i in range(len(model.decoder.layers))],
    }


def layer_grad_norms(model) -> dict[str, list[float]]:
    """After a backward pass: the Frobenius norm of each layer's FFN W2 gradient, per stack."""
    from .probes import weight_grad_norms

    return {stack: weight_grad_norms(model, names) for stack, names in ffn_out_layers(model).items()}


# ----------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    """What one run measured. ``row()`` flattens it for a table."""

    spec: RunSpec
    seed: int
    steps_done: int
    first_loss: float
    final_loss: float  # mean training loss over the last 10% of the logged steps (NaN if diverged)
    val_loss: float
    val_token_accuracy: float
    exact_match: float | None
    diverged: bool
    wall_s: float
    hardware: str
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    grad_norms: dict[int, dict[str, list[float]]] = field(default_factory=dict)  # step -> stack -> per layer
    update_sizes: dict[int, float] = field(default_factory=dict)  # step -> relative output change of that update
    parameters: int = 0
    train_s: float = 0.0  # training time (evaluations excluded)
    ms_per_step: float = float("nan")
    model: nn.Module | None = None  # the trained model, kept only if train_run(keep_model=True)
    state: dict | None = None  # its state dict on the CPU (how a worker process returns it)
    error: str | None = None  # set when the run failed in a worker process (see run_jobs)
    speed: dict = field(default_factory=dict)  # the loop's speed probe: eager vs CUDA-graph step times
    em_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, exact match) at each evaluation

    def row(self) -> dict[str, Any]:
        s = self.spec
        return {
            "config": s.label, "placement": "Pre-LN" if s.norm_first else "Post-LN", "norm": s.norm,
            "residual": s.residual, "init": s.init, "layers": s.n_layers, "lr": s.lr,
            "warmup_steps": s.warmup_steps, "final_norm": s.final_norm, "seed": self.seed,
            "steps": self.steps_done, "final_loss": self.final_loss, "val_loss": self.val_loss,
            "val_token_accuracy": self.val_token_accuracy, "exact_match": self.exact_match,
            "diverged": self.diverged, "wall_s": round(self.wall_s, 2), "hardware": self.hardware,
            "parameters": self.parameters, "ms_per_step": self.ms_per_step, "loss_spikes": loss_spikes(self.curve),
        }


def is_diverged(first_loss: float, losses: Sequence[float]) -> bool:
    """Diverged: a non-finite loss, or a final loss no lower than at the first step.

    The second case catches runs that blew up and then sat at a high plateau (a Post-LN stack
    without warmup often ends at the loss of predicting the unigram distribution).
    """
    if not losses or not all(math.isfinite(x) for x in losses):
        return True
    tail = losses[-max(1, len(losses) // 10):]
    return statistics.fmean(tail) >= first_loss


def loss_spikes(curve: Sequence[tuple[int, float]], factor: float = 1.5, skip: float = 0.1) -> int:
    """Logged points whose loss exceeds ``factor`` times the lowest loss logged before them.

    The first ``skip`` fraction of the points is left out (the loss falls fast and noisily there).
    A non-finite loss counts as a spike.
    """
    losses = [loss for _, loss in curve]
    start = max(1, int(len(losses) * skip))
    spikes, best = 0, min((x for x in losses[:start] if math.isfinite(x)), default=float("inf"))
    for x in losses[start:]:
        if not math.isfinite(x) or x > factor * best:
            spikes += 1
        elif x < best:
            best = x
    return spikes


@torch.no_grad()
def validation_metrics(model, data: Data, device) -> tuple[float, float]:
    """Teacher-forced loss (no label smoothing) and token accuracy on the cached validation batches."""
    from .train import sequence_loss

    was = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    for batch in data.val_batches:
        src, tgt_in, tgt_out, src_mask, tgt_mask = (t.to(device) for t in batch)
        with runtime.autocast(device):
            logits = model(src, tgt_in, src_mask, tgt_mask)
        keep = ~tgt_mask
        n = int(keep.sum())
        total += float(sequence_loss(logits, tgt_out, data.tgt_vocab.PAD, 0.0)) * n
        correct += int(((logits.argmax(-1) == tgt_out) & keep).sum())
        count += n
    model.train(was)
    return total / max(count, 1), correct / max(count, 1)


def train_run(spec: RunSpec, budget: Budget, data: Data, seed: int = 0, device=None,
              probe_steps: Iterable[int] = (), update_steps: Iterable[int] = (), keep_model: bool = False
              ) -> RunResult:
    """Train one model with :func:`resnorm.train.train` and measure it.

    The recipe is the training chapter's (AdamW with betas (0.9, 0.98), weight decay 0.01 on the
    linear weights, linear warmup then cosine decay, label smoothing 0.1, clipping at
    ``spec.grad_clip``, mixed precision where the GPU supports it). ``probe_steps``: optimizer
    steps (0 = at initialization) at which the per-layer FFN W2 gradient norms are recorded, from
    the backward pass that trains, before clipping. ``update_steps``: steps at which the size of
    the update's effect on the model, ``||f(x; W_t+1) - f(x; W_t)|| / ||f(x; W_t)||`` on a fixed
    validation batch (``f`` = the logits), is recorded: the quantity whose blow-up Liu et al.
    (2020) and Wang et al. (2022) blame for Post-LN's instability. The run stops at the first
    logged non-finite loss.
    """
    from . import train as T

    device = torch.device(device) if device is not None else runtime.device()
    cfg = train_config(spec, budget, seed)
    probe_steps, update_steps = set(probe_steps), set(update_steps)
    grads: dict[int, dict[str, list[float]]] = {}
    updates: dict[int, float] = {}
    first: dict[str, float] = {}
    probe = tuple(t.to(device) for t in data.val_batches[0]) if update_steps else None
    before: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def logits_on_probe(model):
        src, tgt_in, _, src_mask, tgt_mask = probe
        with runtime.autocast(device):
            return model(src, tgt_in, src_mask, tgt_mask).float()

    def on_backward(step, model):
        if step in probe_steps:
            grads[step] = layer_grad_norms(model)
        if step in update_steps:
            before["logits"] = logits_on_probe(model)

    def on_step(step, model, loss):
        if step == 0:
            first["loss"] = float(loss)
        if step in update_steps:
            ref = before.pop("logits")
            updates[step] = float((logits_on_probe(model) - ref).norm() / ref.norm().clamp_min(1e-12))

    start = time.perf_counter()
    result = T.train(cfg, data.task, device, on_backward=on_backward, on_step=on_step)
    model = result.model
    log = result.log
    curve = [(r["step"], r["loss"]) for r in log]
    losses = [loss for _, loss in curve]
    first_loss = first.get("loss", float("nan"))
    diverged = result.diverged or is_diverged(first_loss, losses)
    tail = losses[-max(1, len(losses) // 10):]
    final_loss = statistics.fmean(tail) if tail and all(math.isfinite(x) for x in tail) else float("nan")
    finite_params = all(torch.isfinite(p).all() for p in model.parameters())
    val_loss, val_acc = validation_metrics(model, data, device) if finite_params else (float("nan"), 0.0)
    em = None
    if budget.eval_examples:
        em = log[-1]["val_exact_match"] if log and finite_params else 0.0
        em = 0.0 if em is None else em
    steps_done = log[-1]["step"] if log else 0
    train_s = log[-1]["train_s"] if log else 0.0
    wall = time.perf_counter() - start
    return RunResult(spec, seed, steps_done, first_loss, final_loss, val_loss, val_acc, em, diverged, wall,
                     runtime.device_name(device), curve, grads, updates, model.num_parameters(), train_s,
                     1000 * train_s / max(steps_done, 1), model if keep_model else None,
                     speed=dict(result.compile_report),
                     em_curve=[(r["step"], r["val_exact_match"]) for r in log if r["val_exact_match"] is not None])


# ----------------------------------------------------------------------------- several runs


@dataclass(frozen=True)
class Job:
    """One run to do: a spec, its budget and seed, and what to probe (see :func:`train_run`)."""

    spec: RunSpec
    budget: Budget
    seed: int = 0
    probe_steps: tuple[int, ...] = ()
    update_steps: tuple[int, ...] = ()
    keep_model: bool = False


def _run_job(args: tuple) -> RunResult:
    """One run in a worker process: returns the result with the model as a CPU state dict.

    An exception becomes a result with ``error`` set, so that one failed run does not take the
    other runs of the pool down with it; :func:`run_jobs` prints it.
    """
    job, data, threads = args
    torch.set_num_threads(threads)
    try:
        result = train_run(job.spec, job.budget, data, job.seed, None, job.probe_steps, job.update_steps,
                           job.keep_model)
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        nan = float("nan")
        return RunResult(job.spec, job.seed, 0, nan, nan, nan, nan, None, True, 0.0, runtime.device_name(),
                         error=f"{type(err).__name__}: {err}"[:500])
    if result.model is not None:
        result.state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
        result.model = None
    return result


def run_jobs(jobs: Sequence[Job], data: Data, workers: int = 1, device=None, progress: bool = False
             ) -> list[RunResult]:
    """Do every job, ``workers`` at a time, and return the results in the order of ``jobs``.

    ``workers > 1`` runs each job in its own process, started with ``spawn`` (each with its own
    CUDA context on the one GPU) from one pool that serves all the jobs, so the processes start
    once. Put the longest jobs first: the pool hands them out in order.
    """
    if not jobs:
        raise ValueError("run_jobs needs at least one job")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    def report(r: RunResult) -> None:
        if r.error:
            print(f"{r.spec.label:<40} seed {r.seed}: FAILED: {r.error}", flush=True)
        elif progress:
            em = "-" if r.exact_match is None else f"{r.exact_match:.3f}"
            print(f"{r.spec.label:<40} seed {r.seed}: {r.steps_done:>5} steps, loss {r.final_loss:.3f}, "
                  f"EM {em}{'  DIVERGED' if r.diverged else ''}, {r.wall_s:.0f} s", flush=True)

    results: list[RunResult] = []
    if workers == 1:
        for job in jobs:
            results.append(train_run(job.spec, job.budget, data, job.seed, device, job.probe_steps,
                                     job.update_steps, job.keep_model))
            report(results[-1])
        return results
    import concurrent.futures
    import multiprocessing

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = 1 if torch.cuda.is_available() else max(1, cores // workers)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        for r in pool.map(_run_job, [(job, data, threads) for job in jobs]):
            results.append(r)
            report(r)
    return results


def restore_model(result: RunResult, budget: Budget, data: Data) -> nn.Module:
    """The trained model of a run whose worker returned it as a state dict."""
    if result.model is not None:
        return result.model
    if result.state is None:
        raise ValueError("this run did not keep its model; run it with keep_models=True")
    model = build_model(result.spec, budget, data, result.seed)
    model.load_state_dict(result.state)
    return model


def sweep(specs: Sequence[RunSpec], seeds: Sequence[int], budget: Budget, data: Data | None = None, device=None,
          probe_steps: Iterable[int] = (), update_steps: Iterable[int] = (), progress: bool = False,
          keep_models: bool = False, workers: int = 1) -> list[RunResult]:
    """Every spec with every seed on the same budget (and, per seed, the same batches): :func:`run_jobs`."""
    if not specs:
        raise ValueError("sweep needs at least one RunSpec")
    if not seeds:
        raise ValueError("sweep needs at least one seed")
    data = Data(budget) if data is None else data
    jobs = [Job(spec, budget, seed, tuple(probe_steps), tuple(update_steps), keep_models)
            for spec in specs for seed in seeds]
    return run_jobs(jobs, data, workers, device, progress)


# Two-sided 95 % quantiles of Student's t by degrees of freedom (a test checks them against SciPy).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t_quantile(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (for 95 % intervals)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df in _T975:
        return _T975[df]
    larger = [k for k in _T975 if k > df]
    return _T975[min(larger)] if larger else 1.960  # the next larger df: a slightly narrower, close value


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean with its 95 % t-interval (NaN bounds for fewer than two values)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan"), float("nan")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def paired_difference(a: Sequence[RunResult], b: Sequence[RunResult], metric: str,
                      key=lambda r: (r.seed, r.spec.lr, r.spec.n_layers)) -> dict[str, Any]:
    """Mean of ``metric(a) - metric(b)`` over runs paired by ``key`` (same seed, lr, depth), with its 95 % CI.

    Pairing removes what two runs of one seed share (the initial weights' draw, the batches), so the
    interval is about the configurations, not the seeds. A diverged run counts with its metric as
    measured (exact match 0, NaN losses are dropped).
    """
    by_key = {key(r): r for r in b}
    diffs = []
    for r in a:
        other = by_key.get(key(r))
        if other is None:
            continue
        x, y = getattr(r, metric), getattr(other, metric)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
            diffs.append(x - y)
    mean, low, high = mean_ci(diffs)
    verdict = "no data" if not diffs else "too few pairs" if len(diffs) < 2 else (
        "a > b" if low > 0 else "a < b" if high < 0 else "no difference shown")
    return {"metric": metric, "pairs": len(diffs), "mean": mean, "low": low, "high": high, "verdict": verdict}


def summarize(results: Sequence[RunResult], metrics: Sequence[str] = ("final_loss", "val_token_accuracy", "exact_match")
              ) -> list[dict[str, Any]]:
    """One row per configuration: runs, diverged count, and mean, 95 % CI, min and max of each metric.

    Means are over the runs that did not diverge (``nan`` if all diverged); the interval is the
    t-interval over those runs (seeds). Wall time and steps are means per run.
    """
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(r.spec.label, []).append(r)
    rows = []
    for label, runs in groups.items():
        ok = [r for r in runs if not r.diverged]
        row: dict[str, Any] = {"config": label, "runs": len(runs), "diverged": len(runs) - len(ok)}
        for m in metrics:
            values = [getattr(r, m) for r in ok if getattr(r, m) is not None and math.isfinite(getattr(r, m))]
            mean, low, high = mean_ci(values)
            row[f"{m}_mean"], row[f"{m}_low"], row[f"{m}_high"] = mean, low, high
            row[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else float("nan")
            row[f"{m}_min"] = min(values) if values else float("nan")
            row[f"{m}_max"] = max(values) if values else float("nan")
        row["wall_s_per_run"] = statistics.fmean(r.wall_s for r in runs)
        row["steps_per_run"] = statistics.fmean(r.steps_done for r in runs)
        row["parameters"] = runs[0].parameters
        row["hardware"] = runs[0].hardware
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = ("final_loss", "val_token_accuracy", "exact_match"),
                 ) -> str:
    """A Markdown table of :func:`summarize` rows: mean and 95 % interval per metric."""
    head = ["config", "runs", "diverged", *metrics, "steps/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["config"], str(row["runs"]), str(row["diverged"])]
        for m in metrics:
            mean, low, high = row[f"{m}_mean"], row[f"{m}_low"], row[f"{m}_high"]
            if math.isnan(mean):
                cells.append("—")
            elif math.isnan(low):
                cells.append(f"{mean:.3f}")
            else:
                cells.append(f"{mean:.3f} [{low:.3f}, {high:.3f}]")
        cells.append(f"{row['steps_per_run']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- measurements at init


def init_grad_profile(spec: RunSpec, budget: Budget, data: Data, seeds: Sequence[int] = (0,), batches: int = 1,
                      device=None) -> dict[str, list[float]]:
    """Per-layer FFN W2 gradient norms at initialization, averaged over seeds and batches."""
    from .train import sequence_loss

    device = torch.device(device) if device is not None else runtime.device()
    sums: dict[str, list[float]] = {}
    count = 0
    for seed in seeds:
        model = build_model(spec, budget, data, seed).to(device)
        for batch in data.train_batches(seed, batches)[:batches]:
            src, tgt_in, tgt_out, src_mask, tgt_mask = (t.to(device) for t in batch)
            model.zero_grad(set_to_none=True)
            loss = sequence_loss(model(src, tgt_in, src_mask, tgt_mask), tgt_out, data.tgt_vocab.PAD, 0.1)
            loss.backward()
            for stack, values in layer_grad_norms(model).items():
                acc = sums.setdefault(stack, [0.0] * len(values))
                sums[stack] = [a + v for a, v in zip(acc, values)]
            count += 1
    return {stack: [v / count for v in values] for stack, values in sums.items()}


@torch.no_grad()
def encoder_stream(model, src: torch.Tensor, src_mask: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's residual stream: the embeddings, then the output of every layer (before the final norm)."""
    from .probes import record_outputs

    names = [f"encoder.layers.{i}" for i in range(len(model.encoder.layers))]
    was = model.training
    model.eval()
    try:
        with record_outputs(model, names) as outs:
            x0 = model.embed_src(src)
            model.encoder(x0, src_mask)
    finally:
        model.train(was)
    return [x0] + [o[-1] for o in outs]


# ----------------------------------------------------------------------------- rank collapse


def _init_attention(attn: nn.Module, init: str, gen: torch.Generator) -> None:
    """Initialize one attention module's four projections as ``init`` does in the Transformer."""
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        lin = getattr(attn, name)
        with torch.no_grad():
            if init == "gpt2":
                lin.weight.normal_(0.0, 0.02, generator=gen)
            else:  # xavier uniform, as torch.nn.Transformer
                bound = math.sqrt(6.0 / (lin.in_features + lin.out_features))
                lin.weight.uniform_(-bound, bound, generator=gen)
            lin.bias.zero_()


@torch.no_grad()
def rank_collapse_profile(kind: str, shortcut: bool, init: str, n_layers: int, batches: Sequence[tuple],
                          seeds: Sequence[int], d_model: int, n_heads: int, src_vocab_size: int,
                          device=None, dtype: torch.dtype = torch.float64) -> dict[str, list[float]]:
    """How far the tokens are from one shared vector, layer by layer, at initialization.

    ``kind``: ``"attention"`` (a stack of self-attention layers only, no feed-forward and no
    norm: the setting of Dong et al., 2021), ``"post_ln"`` or ``"pre_ln"`` (our full encoder
    layers). ``shortcut``: with or without the residual connections. The measure is
    :func:`resnorm.probes.rank_one_residual` of the token vectors after each layer (0 = collapsed),
    computed in ``dtype`` (float64 by default, so that a collapse is not hidden by rounding:
    float32 bottoms out near 1e-7). Returns the median, min and max over seeds x batches.
    """
    from .attention import MultiHeadAttention
    from .probes import rank_one_residual
    from .transformer import Transformer, TransformerConfig

    if kind not in ("attention", "post_ln", "pre_ln"):
        raise ValueError(f"kind must be 'attention', 'post_ln' or 'pre_ln', got {kind!r}")
    device = torch.device(device) if device is not None else runtime.device()
    per_layer: list[list[float]] = [[] for _ in range(n_layers + 1)]
    for seed in seeds:
        runtime.seed_everything(seed)
        config = TransformerConfig(src_vocab_size=src_vocab_size, tgt_vocab_size=src_vocab_size, d_model=d_model,
                                   n_heads=n_heads, d_ff=4 * d_model, n_encoder_layers=n_layers, n_decoder_layers=1,
                                   dropout=0.0, norm_first=kind == "pre_ln", init=init,
                                   residual="standard" if shortcut else "none")
        model = Transformer(config).to(device=device, dtype=dtype).eval()
        if kind == "attention":
            gen = torch.Generator().manual_seed(seed)
            layers = []
            for _ in range(n_layers):
                attn = MultiHeadAttention(d_model, n_heads)
                _init_attention(attn, init, gen)
                layers.append(attn.to(device=device, dtype=dtype).eval())
        for batch in batches:
            src, mask = batch[0].to(device), batch[3].to(device)
            x = model.embed_src(src)
            stream = [x]
            if kind == "attention":
                for attn in layers:
                    out = attn(x, x, x, key_padding_mask=mask)
                    x = x + out if shortcut else out
                    stream.append(x)
            else:
                stream = encoder_stream(model, src, mask)
            for i, h in enumerate(stream):
                per_layer[i].append(rank_one_residual(h, mask))
    return {"median": [statistics.median(v) for v in per_layer], "min": [min(v) for v in per_layer],
            "max": [max(v) for v in per_layer]}


# ----------------------------------------------------------------------------- cost of a normalization


def step_time(spec: RunSpec, budget: Budget, data: Data, compile_norms: bool = False, device=None,
              rep_ms: float = 300.0):
    """Median time of one training step (forward, backward, AdamW) of ``spec``'s model, in isolation.

    One fixed batch of the training stream (padded as ``budget`` says), the book's mixed precision.
    ``compile_norms=True`` compiles every normalization module (``nn.Module.compile``, static
    shapes) and leaves the rest eager: the step then differs from the eager one by what the
    compiler makes of the norm alone. On a CPU the compiler runs dynamo's tracing only (backend
    ``eager``), so a CPU's "compiled" time measures no generated code. Returns a
    :class:`resnorm.bench.Timing` (median and spread over repetitions, warm-up excluded).
    """
    from . import bench
    from .norms import DyT, LayerNorm, RMSNorm
    from .train import param_groups, sequence_loss

    device = torch.device(device) if device is not None else runtime.device()
    model = build_model(spec, budget, data).to(device).train()
    if compile_norms:
        backend = "inductor" if device.type == "cuda" else "eager"
        for m in model.modules():
            if isinstance(m, (LayerNorm, RMSNorm, DyT)):
                m.compile(dynamic=False, backend=backend)
    optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4, betas=(0.9, 0.98),
                                  **({"fused": True} if device.type == "cuda" else {}))
    batch = next(data.task.stream(budget.batch_size, seed=12345, pad_multiple=budget.pad_multiple))
    src, tgt_in, tgt_out, src_mask, tgt_mask = (t.to(device) for t in batch)
    pad = data.tgt_vocab.PAD

    def step():
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast(device):
            logits = model(src, tgt_in, src_mask, tgt_mask)
        sequence_loss(logits, tgt_out, pad, 0.1).backward()
        optimizer.step()

    return bench.do_bench(step, device=device, rep_ms=rep_ms, flush_l2=False)
