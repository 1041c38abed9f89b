"""Experiment runners for the chapter on residuals and LayerNorm inside the Transformer.

A run is one :class:`RunSpec` (placement, norm, residual rule, initialization, depth, learning
rate, warmup, seed) trained on a fixed :class:`Budget`; :func:`sweep` runs specs x seeds and
returns tidy rows (one dict per run: final loss, token accuracy, exact match, diverged flag,
wall time, hardware), and :func:`summarize` turns them into mean / spread per configuration.

Why a loop of our own instead of :func:`resnorm.train.train`: the training chapter's
``TrainConfig`` has no fields for ``norm``, ``residual`` or ``init``, no hook to read per-layer
gradient norms during the first steps, and no early stop when the loss turns NaN. The loop
below reuses that module's pieces (:func:`~resnorm.train.lr_factor` for the warmup and cosine
schedule, :func:`~resnorm.train.param_groups`, :func:`~resnorm.train.sequence_loss`,
:class:`~resnorm.train.TaskData` for the held-out splits and the batch stream, and
:func:`resnorm.evaluate.exact_match`) so that the recipe is the same one.

Every run of a sweep sees the same pre-generated training batches (drawn once per seed), so
two configurations differ only in the model, never in the data order.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

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
    """Model width and training length, the same for every run of a comparison."""

    steps: int = 100
    batch_size: int = 64
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 128
    eval_examples: int = 100  # validation expressions greedily decoded for exact match (0: skip)
    val_batches: int = 2  # teacher-forced validation batches for loss and token accuracy
    log_every: int = 5
    n_test: int = 2000  # held-out expressions in the task's split

    def __post_init__(self):
        for name in ("steps", "batch_size", "d_model", "n_heads", "d_ff", "log_every", "n_test", "val_batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Budget.{name} must be positive, got {getattr(self, name)}")
        if self.eval_examples < 0:
            raise ValueError(f"Budget.eval_examples must be >= 0, got {self.eval_examples}")
        if self.d_model % self.n_heads:
            raise ValueError(f"Budget.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")


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


def build_model(spec: RunSpec, budget: Budget, data: Data, seed: int = 0):
    """The Transformer that ``spec`` describes, seeded (``final_norm=False`` drops the stacks' last norm)."""
    from .transformer import Transformer, TransformerConfig

    runtime.seed_everything(seed)
    config = TransformerConfig(
        src_vocab_size=len(data.src_vocab), tgt_vocab_size=len(data.tgt_vocab),
        d_model=budget.d_model, n_heads=budget.n_heads, d_ff=budget.d_ff,
        n_encoder_layers=spec.n_layers, n_decoder_layers=spec.n_layers, dropout=0.0,
        norm_first=spec.norm_first, norm=spec.norm, residual=spec.residual, init=spec.init,
        pad_id=data.tgt_vocab.PAD,
    )
    model = Transformer(config)
    if not spec.final_norm:
        model.encoder.norm = None
        model.decoder.norm = None
    return model


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
    final_loss: float  # mean training loss over the last 10% of the steps done (NaN if diverged)
    val_loss: float
    val_token_accuracy: float
    exact_match: float | None
    diverged: bool
    wall_s: float
    hardware: str
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    grad_norms: dict[int, dict[str, list[float]]] = field(default_factory=dict)  # step -> stack -> per layer
    parameters: int = 0
    model: nn.Module | None = None  # the trained model, kept only if train_run(keep_model=True)

    def row(self) -> dict[str, Any]:
        s = self.spec
        return {
            "config": s.label, "placement": "Pre-LN" if s.norm_first else "Post-LN", "norm": s.norm,
            "residual": s.residual, "init": s.init, "layers": s.n_layers, "lr": s.lr,
            "warmup_steps": s.warmup_steps, "final_norm": s.final_norm, "seed": self.seed,
            "steps": self.steps_done, "final_loss": self.final_loss, "val_loss": self.val_loss,
            "val_token_accuracy": self.val_token_accuracy, "exact_match": self.exact_match,
            "diverged": self.diverged, "wall_s": round(self.wall_s, 2), "hardware": self.hardware,
            "parameters": self.parameters,
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


@torch.no_grad()
def validation_metrics(model, data: Data, device) -> tuple[float, float]:
    """Teacher-forced loss (no label smoothing) and token accuracy on the cached validation batches."""
    from .train import sequence_loss

    was = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    for batch in data.val_batches:
        src, tgt_in, tgt_out, src_mask, tgt_mask = (t.to(device) for t in batch)
        logits = model(src, tgt_in, src_mask, tgt_mask)
        keep = ~tgt_mask
        n = int(keep.sum())
        total += float(sequence_loss(logits, tgt_out, data.tgt_vocab.PAD, 0.0)) * n
        correct += int(((logits.argmax(-1) == tgt_out) & keep).sum())
        count += n
    model.train(was)
    return total / max(count, 1), correct / max(count, 1)


def train_run(spec: RunSpec, budget: Budget, data: Data, seed: int = 0, device=None,
              probe_steps: Iterable[int] = (), on_step: Callable[[int, nn.Module, float], None] | None = None,
              label_smoothing: float = 0.1, keep_model: bool = False) -> RunResult:
    """Train one model on ``budget.steps`` batches and measure it.

    Schedule: linear warmup over ``spec.warmup_steps`` then cosine decay (the training chapter's
    :func:`resnorm.train.lr_factor`), AdamW with betas (0.9, 0.98), weight decay 0.01 on the
    linear weights only. ``probe_steps``: optimizer steps (0 = at initialization) at which the
    per-layer FFN W2 gradient norms are recorded, from the same backward pass that trains.
    The run stops early at the first non-finite loss. ``on_step(step, model, loss)`` is called
    after every optimizer step; ``keep_model=True`` returns the trained model in the result.
    """
    from . import train as T

    device = torch.device(device) if device is not None else runtime.device()
    probe_steps = set(probe_steps)
    model = build_model(spec, budget, data, seed).to(device)
    n_params = model.num_parameters()
    cfg = T.make_config("quick", steps=budget.steps, warmup_steps=spec.warmup_steps, lr=spec.lr,
                        schedule="cosine", batch_size=budget.batch_size, seed=seed)
    optimizer = torch.optim.AdamW(T.param_groups(model, cfg.weight_decay), lr=spec.lr, betas=(0.9, cfg.beta2))
    # Mixed precision as everywhere in the book: bf16 on GPUs of compute capability 8.0+, fp16 with a
    # scaler on older ones, float32 on CPUs (where both calls below are no-ops).
    scaler = runtime.grad_scaler(device)
    pad = data.tgt_vocab.PAD
    losses: list[float] = []
    curve: list[tuple[int, float]] = []
    grads: dict[int, dict[str, list[float]]] = {}
    start = time.perf_counter()
    model.train()
    step = 0
    for step, batch in enumerate(data.train_batches(seed, budget.steps)):
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * T.lr_factor(cfg, step)
        src, tgt_in, tgt_out, src_mask, tgt_mask = (t.to(device) for t in batch)
        with runtime.autocast(device):
            logits = model(src, tgt_in, src_mask, tgt_mask)
            loss = T.sequence_loss(logits, tgt_out, pad, label_smoothing)
        value = float(loss.detach())
        losses.append(value)
        if step % budget.log_every == 0 or step == budget.steps - 1 or not math.isfinite(value):
            curve.append((step, value))
        if not math.isfinite(value):
            break
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # probes and clipping must see the true gradients
        if step in probe_steps:
            grads[step] = layer_grad_norms(model)
        if spec.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if on_step is not None:
            on_step(step, model, value)
    steps_done = len(losses)
    diverged = is_diverged(losses[0], losses)
    tail = losses[-max(1, steps_done // 10):]
    final_loss = statistics.fmean(tail) if all(math.isfinite(x) for x in tail) else float("nan")
    finite_params = all(torch.isfinite(p).all() for p in model.parameters())
    if finite_params:
        val_loss, val_acc = validation_metrics(model, data, device)
    else:
        val_loss, val_acc = float("nan"), 0.0
    em = None
    if data.eval_examples and finite_params:
        from .evaluate import exact_match

        em = exact_match(model, data.eval_examples, data.src_vocab, data.tgt_vocab)
    elif data.eval_examples:
        em = 0.0
    wall = time.perf_counter() - start
    return RunResult(spec, seed, steps_done, losses[0], final_loss, val_loss, val_acc, em, diverged, wall,
                     runtime.device_name(device), curve, grads, n_params, model if keep_model else None)


def sweep(specs: Sequence[RunSpec], seeds: Sequence[int], budget: Budget, data: Data | None = None, device=None,
          probe_steps: Iterable[int] = (), progress: bool = False, keep_models: bool = False) -> list[RunResult]:
    """Every spec with every seed on the same budget (and, per seed, the same batches).

    ``progress`` prints one line per run; ``keep_models`` keeps each trained model in its result.
    """
    if not specs:
        raise ValueError("sweep needs at least one RunSpec")
    if not seeds:
        raise ValueError("sweep needs at least one seed")
    data = Data(budget) if data is None else data
    results = []
    probe_steps = tuple(probe_steps)
    for spec in specs:
        for seed in seeds:
            r = train_run(spec, budget, data, seed, device, probe_steps, keep_model=keep_models)
            if progress:
                em = "-" if r.exact_match is None else f"{r.exact_match:.2f}"
                print(f"{r.spec.label:<44} seed {seed}: loss {r.final_loss:.3f}  tok acc {r.val_token_accuracy:.3f}"
                      f"  EM {em}  {'DIVERGED ' if r.diverged else ''}{r.wall_s:.1f}s")
            results.append(r)
    return results


def summarize(results: Sequence[RunResult], metrics: Sequence[str] = ("final_loss", "val_token_accuracy", "exact_match")
              ) -> list[dict[str, Any]]:
    """One row per configuration: runs, diverged count, and mean / std / min / max of each metric.

    Means are over the runs that did not diverge (``nan`` if all diverged); the spread is the
    sample standard deviation (0 for a single run). Wall time is the mean per run.
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
            row[f"{m}_mean"] = statistics.fmean(values) if values else float("nan")
            row[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else float("nan")
            row[f"{m}_min"] = min(values) if values else float("nan")
            row[f"{m}_max"] = max(values) if values else float("nan")
        row["wall_s_per_run"] = statistics.fmean(r.wall_s for r in runs)
        row["parameters"] = runs[0].parameters
        row["hardware"] = runs[0].hardware
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = ("final_loss", "val_token_accuracy", "exact_match"),
                 ) -> str:
    """A Markdown table of :func:`summarize` rows: mean ± std [min, max] per metric."""
    head = ["config", "runs", "diverged", *metrics, "s/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["config"], str(row["runs"]), str(row["diverged"])]
        for m in metrics:
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]
            cells.append("—" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}")
        cells.append(f"{row['wall_s_per_run']:.1f}")
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
