"""Train the encoder-decoder Transformer to read Chinese numerical expressions in English.

    python -m resnorm.train                                  # preset = the current mode (quick, cpu or full)
    python -m resnorm.train preset=cpu time_budget_s=600 lr=1e-3 out=runs/cpu.pt
    torchrun --nproc_per_node=2 -m resnorm.train preset=quick steps=20

The command line and ``book/training.ipynb`` call the same code: a :class:`TrainConfig`
(one dataclass, three presets, ``key=value`` overrides) and :func:`train`. The loop is the
usual one, written out: AdamW with no weight decay on norms, biases and embeddings, linear
warmup then cosine decay, label smoothing, gradient clipping, mixed precision chosen by
:mod:`resnorm.runtime`, optional ``torch.compile`` on a GPU, and DistributedDataParallel
when launched by ``torchrun`` (every rank draws its own batches; only rank 0 logs and saves).

Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(path, weights_only=True)``: no pickled classes, no code run on load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__, runtime

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
SHIPPED_CHECKPOINT = CHECKPOINT_DIR / "numbers_zh_en.pt"  # the cpu preset, trained on a CPU
GPU_CHECKPOINT = CHECKPOINT_DIR / "numbers_zh_en_gpu.pt"  # the full preset, trained on a GPU (bfloat16)
CHECKPOINT_FORMAT = "resnorm-translator-1"

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
SCHEDULES = ("cosine", "inverse_sqrt", "constant")


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that decides a training run. Presets below; override any field as ``key=value``."""

    preset: str = "cpu"
    # model: copied into the model's TransformerConfig
    d_model: int = 128
    n_heads: int = 4
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    d_ff: int = 512
    dropout: float = 0.0  # the training set is large and generated; dropout only slowed convergence here
    norm_first: bool = True  # Pre-LN: stable at lr 1e-3 with a short warmup (Xiong et al., 2020)
    norm: str = "layernorm"  # "layernorm" | "rmsnorm" | "dyt" | "none" (the experiments vary these four)
    residual: str = "standard"  # "standard" | "none" | "rezero" | "deepnorm"
    init: str = "xavier"  # "xavier" | "gpt2" | "deepnorm"
    final_norm: bool = True  # Pre-LN only: the norm after each stack (False drops it)
    fast: bool = False  # the model's fast configuration (same function and state dict, fewer kernels)
    # data
    n_test: int = 20_000  # held-out expressions (the task module stratifies them)
    batch_size: int = 256  # expressions per optimizer step, summed over all DDP ranks
    # Pad every batch's source and target length up to a multiple of this. 1: each batch is as
    # long as its longest expression. 32: every batch has the task's longest shape (32 x 32), so
    # torch.compile traces one graph; on a GPU the padding costs little, since a step of this
    # small model is bound by kernel launches, not by arithmetic.
    pad_multiple: int = 1
    # optimisation
    steps: int = 3000
    time_budget_s: float = 0.0  # > 0: stop after this much training time and schedule the lr by time
    lr: float = 1e-3
    warmup_steps: int = 200
    schedule: str = "cosine"
    min_lr_ratio: float = 0.02  # the cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.01
    beta2: float = 0.98
    label_smoothing: float = 0.1
    grad_clip: float = 1.0  # 0 = no clipping
    seed: int = 0
    # bookkeeping
    log_interval: int = 25
    eval_interval: int = 250
    eval_examples: int = 1000  # validation expressions decoded at each evaluation (0: no exact-match evaluation)
    data_workers: int = 0  # DataLoader processes generating batches (a GPU outruns one Python process)
    compile: bool = False  # torch.compile after timing eager steps; kept only if its steps are faster
    # Replay the forward and backward passes from CUDA graphs (torch.cuda.make_graphed_callables)
    # after timing eager steps; kept only if its steps are faster. For small models, whose steps
    # are bound by the CPU's kernel launches: a graph launches them all at once, without a compile.
    # Needs a CUDA device and one padded shape (pad_multiple); other shapes run eagerly.
    cuda_graphs: bool = False
    stop_on_nonfinite: bool = True  # stop at the first log interval whose loss is NaN or inf (a divergence)
    precision: str = "auto"
    progress: bool = True
    out: str = ""  # checkpoint path written at the end ("" = do not save)

    def __post_init__(self) -> None:
        problems = []
        for name in ("d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff", "batch_size",
                     "steps", "log_interval", "eval_interval", "n_test"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % max(self.n_heads, 1):
            problems.append(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.warmup_steps < 0 or self.eval_examples < 0:
            problems.append(f"warmup_steps and eval_examples must be >= 0, got {self.warmup_steps}, {self.eval_examples}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.grad_clip < 0:
            problems.append(f"lr must be positive and grad_clip >= 0, got lr={self.lr}, grad_clip={self.grad_clip}")
        if self.pad_multiple <= 0:
            problems.append(f"pad_multiple must be positive, got {self.pad_multiple}")
        if self.compile and self.cuda_graphs:
            problems.append("compile and cuda_graphs exclude each other: choose one way to speed up the steps")
        from .transformer import INITS, NORMS, RESIDUALS

        for name, valid in (("norm", NORMS), ("residual", RESIDUALS), ("init", INITS)):
            if getattr(self, name) not in valid:
                problems.append(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        if not self.final_norm and not self.norm_first:
            problems.append("final_norm=False applies to Pre-LN only (norm_first=True): Post-LN has no final norm")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.preset not in PRESETS:
            problems.append(f"preset must be one of {tuple(PRESETS)}, got {self.preset!r}")
        if problems:
            raise ValueError("bad TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Each preset lists only what differs from the defaults above.
PRESETS: dict[str, dict[str, Any]] = {
    # CI: a few steps of a tiny model, to show that the loop runs; quality comes from the shipped checkpoint.
    "quick": dict(d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=64, n_test=400,
                  batch_size=32, steps=30, warmup_steps=5, log_interval=5, eval_interval=15,
                  eval_examples=64, progress=False),
    # A laptop: three minutes of training (evaluations not counted), the schedule spread over that time.
    "cpu": dict(steps=20_000, time_budget_s=180.0, warmup_steps=200, batch_size=128, lr=1.5e-3,
                eval_interval=100, eval_examples=300, fast=True),
    # One GPU: 150 s of training, compile time included. 5.6M parameters; the checkpoint ships in
    # bfloat16 (11 MB). Measured on an H200 before this preset (issue #13): with the old eager model,
    # validation exact match reached 99.9 % after 109 s; batches padded to one shape made steps 2x
    # faster (54.6 -> 27.9 ms), and torch.compile on them 1.8x faster again (15.8 ms, 18.6 s to compile).
    "full": dict(d_model=256, n_heads=8, n_encoder_layers=3, n_decoder_layers=3, d_ff=1024,
                 batch_size=1024, steps=100_000, time_budget_s=150.0, lr=1e-3, warmup_steps=300,
                 eval_interval=1000, eval_examples=1000, compile=True, data_workers=10, pad_multiple=32,
                 fast=True),
}

# RESNORM_SMOKE=1 with the full preset: every full-mode code path (fast model, one padded shape,
# compile, data workers, the time budget) at the quick preset's size, so that CI on a CPU runs
# what a GPU run will run (see resnorm.runtime.smoke).
SMOKE_SIZES = ("d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff", "n_test", "batch_size",
               "steps", "warmup_steps", "log_interval", "eval_interval", "eval_examples")
SMOKE_OVERRIDES: dict[str, Any] = {**{k: PRESETS["quick"][k] for k in SMOKE_SIZES},
                                   "time_budget_s": 60.0, "data_workers": 2}


def valid_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _convert(key: str, text: str, kind) -> Any:
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, kind) if isinstance(kind, str) else kind
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} takes true or false, got {text!r}")
    try:
        if kind is int:
            try:
                return int(text.replace("_", ""))
            except ValueError:
                number = float(text)  # accept 2e4
                if not number.is_integer():
                    raise
                return int(number)
        if kind is float:
            return float(text.replace("_", ""))
    except ValueError:
        raise ValueError(f"{key} takes a {kind.__name__}, got {text!r}") from None
    return text


def make_config(preset: str | None = None, **overrides) -> TrainConfig:
    """A preset (default: the current mode, see :func:`resnorm.runtime.mode`) with fields overridden."""
    preset = runtime.mode() if preset is None else preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(valid_keys()))
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(unknown)}; valid keys are: {', '.join(valid_keys())}")
    overrides.pop("preset", None)
    smoke = SMOKE_OVERRIDES if preset == "full" and runtime.smoke() else {}
    return TrainConfig(**{**PRESETS[preset], **smoke, **overrides, "preset": preset})


def parse_args(argv: list[str]) -> TrainConfig:
    """``["preset=cpu", "steps=500", "lr=3e-4"]`` -> TrainConfig. Each item must be ``key=value``."""
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    pairs: dict[str, str] = {}
    for item in argv:
        if item in ("-h", "--help"):
            print(_usage())
            raise SystemExit(0)
        if "=" not in item:
            raise ValueError(f"arguments are key=value pairs, got {item!r}; valid keys are: {', '.join(valid_keys())}")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if key not in types:
            raise ValueError(f"unknown config key {key!r}; valid keys are: {', '.join(valid_keys())}")
        pairs[key] = value
    preset = pairs.pop("preset", None)
    return make_config(preset, **{k: _convert(k, v, types[k]) for k, v in pairs.items()})


def _usage() -> str:
    lines = [__doc__.strip().split("\n\n")[1], "", "keys (cpu preset values):"]
    cfg = make_config("cpu")
    lines += [f"  {k}={getattr(cfg, k)!r}" for k in valid_keys()]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Optimizer and schedule
# --------------------------------------------------------------------------------------


def lr_factor(cfg: TrainConfig, step: int, progress: float | None = None) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based).

    Linear warmup over ``warmup_steps`` (Adam's second-moment estimates are noisy in the
    first steps, and a Post-LN stack in particular diverges without it), then decay.
    ``progress`` in [0, 1] is the fraction of the run done; by default ``step / steps``
    (counted after the warmup). A time-budgeted run passes the fraction of its time budget, and
    the schedule follows whichever of the two budgets, steps or time, is nearer its end.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "inverse_sqrt":
        return math.sqrt(max(cfg.warmup_steps, 1) / (step + 1))
    step_progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    progress = step_progress if progress is None else max(progress, step_progress)
    progress = min(max(progress, 0.0), 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only the weight matrices of linear layers.

    Decaying LayerNorm gains pulls them towards 0 (not towards their init, 1), biases have
    nothing to regularize, and embedding rows of rare tokens would shrink only because they
    are rare. nanoGPT makes the same split by ``dim() >= 2``, which would also decay embeddings.
    """
    decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields each tied tensor once
        if not p.requires_grad:
            continue
        (decay if id(p) in decay_ids and id(p) not in embed_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------
# Model, data and the loss
# --------------------------------------------------------------------------------------


def model_config(cfg: TrainConfig, src_vocab_size: int, tgt_vocab_size: int):
    """The :class:`resnorm.transformer.TransformerConfig` that ``cfg`` describes."""
    from .transformer import TransformerConfig

    return TransformerConfig(**_model_kwargs(cfg, src_vocab_size, tgt_vocab_size))


def _model_kwargs(cfg: TrainConfig, src_vocab_size: int, tgt_vocab_size: int) -> dict:
    from .transformer import TransformerConfig

    names = {f.name for f in dataclasses.fields(TransformerConfig)}
    wanted = dict(d_model=cfg.d_model, n_heads=cfg.n_heads, n_encoder_layers=cfg.n_encoder_layers,
                  n_decoder_layers=cfg.n_decoder_layers, d_ff=cfg.d_ff, dropout=cfg.dropout,
                  norm_first=cfg.norm_first, norm=cfg.norm, residual=cfg.residual, init=cfg.init,
                  fast=cfg.fast, src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size)
    return {k: v for k, v in wanted.items() if k in names}


def sequence_loss(logits: torch.Tensor, target: torch.Tensor, pad_id: int, label_smoothing: float) -> torch.Tensor:
    """Mean token cross-entropy with label smoothing, ignoring padding (computed in float32)."""
    return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=pad_id,
                           label_smoothing=label_smoothing)


# --------------------------------------------------------------------------------------
# Data: held-out splits from the task module, and an endless stream of fresh training batches
# --------------------------------------------------------------------------------------


class TrainStream(torch.utils.data.IterableDataset):
    """Endless batches of freshly generated expressions, never one whose English is held out.

    A fixed training list would be exhausted by a GPU run in a few seconds; generating each
    batch is cheap (tens of ms per 1,000 expressions), and a DataLoader with workers hides even
    that. Every (rank, worker) pair has its own random stream. ``pad_multiple`` pads each batch's
    source and target lengths up to a multiple of it (see :class:`TrainConfig`).
    """

    def __init__(self, held_out: set[str], batch_size: int, seed: int, src_vocab, tgt_vocab, pool_batches: int = 16,
                 pad_multiple: int = 1):
        self.held_out, self.batch_size, self.seed, self.pool_batches = held_out, batch_size, seed, pool_batches
        self.src_vocab, self.tgt_vocab, self.pad_multiple = src_vocab, tgt_vocab, pad_multiple

    def _rng(self):
        import random

        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id + 1
        return random.Random(self.seed * 10_007 + worker)

    def example_batches(self, rng=None):
        """The stream's batches as lists of :class:`resnorm.tasks.Example` (what :meth:`__iter__` encodes)."""
        from . import tasks

        rng = self._rng() if rng is None else rng
        pool = self.batch_size * self.pool_batches
        while True:
            examples: list = []
            while len(examples) < pool:
                examples += [e for e in tasks.generate(pool, rng) if e.target not in self.held_out]
            # Sort a pool of several batches by length and cut it into batches: each batch then
            # holds expressions of similar length, and little compute goes to padding.
            examples = sorted(examples[:pool], key=lambda e: (len(e.source), len(e.target)))
            chunks = [examples[i:i + self.batch_size] for i in range(0, pool, self.batch_size)]
            rng.shuffle(chunks)
            yield from chunks

    def __iter__(self):
        from . import tasks

        for chunk in self.example_batches():
            b = tasks.encode_batch(chunk, self.src_vocab, self.tgt_vocab)
            yield pad_batch((b.src, b.tgt_in, b.tgt_out, b.src_key_padding_mask, b.tgt_key_padding_mask),
                            self.pad_multiple)


def pad_batch(batch: tuple, multiple: int) -> tuple:
    """Pad ``(src, tgt_in, tgt_out, src_mask, tgt_mask)`` to lengths that are multiples of ``multiple``.

    Padding tokens are PAD (id 0) and their mask entries True, so the loss and attention ignore them.
    """
    if multiple <= 1:
        return batch
    src, tgt_in, tgt_out, src_mask, tgt_mask = batch
    S, T = src.shape[1], tgt_in.shape[1]
    extra_s, extra_t = -S % multiple, -T % multiple
    if not extra_s and not extra_t:
        return batch
    pad = torch.nn.functional.pad
    return (pad(src, (0, extra_s)), pad(tgt_in, (0, extra_t)), pad(tgt_out, (0, extra_t)),
            pad(src_mask, (0, extra_s), value=True), pad(tgt_mask, (0, extra_t), value=True))


@dataclass
class TaskData:
    """The task's vocabularies, its held-out sets (from :func:`resnorm.tasks.make_splits`) and
    a validation sample for the evaluations during training."""

    src_vocab: Any
    tgt_vocab: Any
    valid: list
    test: list
    listed: list
    seed: int = 0

    @classmethod
    def build(cls, cfg: TrainConfig) -> "TaskData":
        from . import tasks

        listed = len(tasks.listed_examples())
        splits = tasks.make_splits(n_train=listed, n_test=cfg.n_test, seed=cfg.seed)
        return cls(tasks.source_vocab(), tasks.target_vocab(), splits.valid, splits.test, splits.listed, cfg.seed)

    @property
    def held_out(self) -> set[str]:
        return {e.target for e in self.valid} | {e.target for e in self.test}

    def val_sample(self, n: int) -> list:
        """A fixed random sample of the validation set (it is sorted by category, so not its head)."""
        import random

        return random.Random(self.seed).sample(self.valid, min(n, len(self.valid)))

    def stream(self, batch_size: int, seed: int, workers: int = 0, pad_multiple: int = 1):
        """An iterator of ``(src, tgt_in, tgt_out, src_mask, tgt_mask)`` training batches."""
        dataset = TrainStream(self.held_out, batch_size, seed, self.src_vocab, self.tgt_vocab,
                              pad_multiple=pad_multiple)
        if workers == 0:
            return iter(dataset)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=4,
                                             pin_memory=torch.cuda.is_available(), persistent_workers=True)
        return iter(loader)


# --------------------------------------------------------------------------------------
# Distributed data parallel
# --------------------------------------------------------------------------------------


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup_distributed() -> DistInfo:
    """Join the process group when launched by ``torchrun`` (it sets RANK, WORLD_SIZE, MASTER_ADDR, ...).

    gloo on CPUs, nccl on GPUs. A plain ``python -m resnorm.train`` sees no WORLD_SIZE and runs alone.
    """
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, False)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(rank, world_size, local_rank, True)


def _agree(value: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's value on every rank, so that time-based decisions (lr, stopping) stay in lockstep."""
    if not info.active:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def init_model(cfg: TrainConfig, data):
    """A freshly initialised Transformer for ``cfg`` (seeded: the same weights on every DDP rank)."""
    from .transformer import Transformer

    runtime.seed_everything(cfg.seed)
    mcfg = model_config(cfg, len(data.src_vocab), len(data.tgt_vocab))
    model = Transformer(mcfg)
    if not cfg.final_norm:
        model.encoder.norm = model.decoder.norm = None
    return model, mcfg


def per_rank_batch(cfg: TrainConfig, world_size: int) -> int:
    """Examples per rank and step: ``batch_size`` is the global batch, split over the ranks."""
    return max(cfg.batch_size // world_size, 1)


def rank_seed(cfg: TrainConfig, rank: int) -> int:
    """The data stream's seed: its own per rank (else DDP would average identical gradients)."""
    return cfg.seed * 1000 + rank + 1


def initial_model_digest(cfg: TrainConfig, data: TaskData | None = None) -> str:
    """:func:`state_digest` of the model before training (for the DDP test)."""
    data = TaskData.build(cfg) if data is None else data
    return state_digest(init_model(cfg, data)[0])


def first_batch_digest(cfg: TrainConfig, rank: int, world_size: int, data: TaskData | None = None) -> str:
    """SHA-256 of the source tokens of the first batch that rank ``rank`` trains on."""
    data = TaskData.build(cfg) if data is None else data
    src = next(data.stream(per_rank_batch(cfg, world_size), rank_seed(cfg, rank), cfg.data_workers, cfg.pad_multiple))[0]
    return hashlib.sha256(src.contiguous().numpy().tobytes()).hexdigest()


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model and everything needed to use or save it."""

    model: nn.Module
    config: TrainConfig
    model_config: Any
    src_vocab: Any
    tgt_vocab: Any
    log: list[dict] = field(default_factory=list)
    checkpoint: str | None = None
    device: str = ""
    precision: str = ""
    diverged: bool = False  # the loss became NaN or inf (the run stopped there if cfg.stop_on_nonfinite)
    diverged_step: int | None = None
    compile_report: dict = field(default_factory=dict)  # eager vs compiled step time, compile time, graphs


def _precision_context(cfg: TrainConfig, device: torch.device):
    import contextlib

    if cfg.precision == "auto":
        return runtime.autocast(device), runtime.amp_dtype(device)
    if cfg.precision == "float32" or device.type == "cpu" and cfg.precision != "bfloat16":
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if cfg.precision == "bfloat16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), dtype


def _raw(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (they share its parameters)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _dynamo_graphs() -> int:
    """Graphs that torch.compile has built in this process so far (each recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


CAPTURE_ERROR_MODE = "thread_local"


def _lend_capture_mode(mode: str):
    """Make ``torch.cuda.graph`` default to ``capture_error_mode=mode`` for the ``with`` block.

    For versions of torch whose ``make_graphed_callables`` has no ``capture_error_mode``
    argument: it opens ``torch.cuda.graph(...)`` without one, so the captures take the class's
    default ("global"). Returns a context manager (a no-op where the source shows no such call).
    """
    import contextlib
    import inspect

    try:
        uses_graph = "torch.cuda.graph(" in inspect.getsource(torch.cuda.make_graphed_callables)
    except (OSError, TypeError):  # no source (a stand-in in the tests, a frozen install)
        uses_graph = True
    if not uses_graph:
        return contextlib.nullcontext(False)

    @contextlib.contextmanager
    def lent():
        original = torch.cuda.graph

        # A function, not a subclass: the object it makes is torch.cuda.graph itself, so that it
        # shares the class's one capture stream (a subclass would make a stream of its own).
        def graph(*args, **kwargs):
            kwargs.setdefault("capture_error_mode", mode)
            return original(*args, **kwargs)

        torch.cuda.graph = graph
        try:
            yield True
        finally:
            torch.cuda.graph = original

    return lent()


def _make_graphed(module: nn.Module, sample: tuple, report: dict | None = None):
    """``torch.cuda.make_graphed_callables`` with the capture settings this loop needs.

    On an H200 (torch 2.11) the first capture of every fresh process failed with
    ``cudaErrorStreamCaptureInvalidated``, and every later capture in the same process worked;
    that was seen with and without a DataLoader in the process (the calibration's first check
    had none). The cause is not known yet. This function guards against the two known ways a
    capture in this loop can be invalidated by something outside it; ``_prime_capture`` guards
    against a one-off initialization inside a process's first capture.

    * ``capture_error_mode="thread_local"``: in the default "global" mode, a CUDA call that CUDA
      deems unsafe during a capture, made by *any* thread of the process, invalidates the
      capture. The DataLoader's pin-memory thread makes such calls (``cudaHostAlloc`` when it
      needs a new pinned buffer) while it stages the next batch. "thread_local" restricts only
      the capturing thread; PyTorch's ``torch.cuda.graph`` documents the mode for this case.
      Where ``make_graphed_callables`` takes no ``capture_error_mode`` (torch 2.13, for one),
      the mode is lent to ``torch.cuda.graph`` for the duration of the call.
    * ``torch.autograd.graph.set_override_stale_capture_stream(True)`` where it exists: an
      AccumulateGrad node left from an eager step still names the default stream, and the
      capture's backward would make that stream wait, which invalidates the capture; with the
      override, autograd uses the capturing stream instead (the loop also frees each step's
      graph; torch 2.11 warned of such a node in the H200 runs).
    * ``allow_unused_input=True``: a variant's unused parameter (say, a gain it never applies)
      gets no gradient.

    What was set goes into ``report`` (``capture_mode``, ``stale_stream_override``), with the
    warnings raised during the capture (``capture_warnings``), which name such causes.
    """
    import contextlib
    import inspect
    import warnings

    kwargs: dict = {"allow_unused_input": True}
    with contextlib.ExitStack() as stack:
        if "capture_error_mode" in inspect.signature(torch.cuda.make_graphed_callables).parameters:
            kwargs["capture_error_mode"] = CAPTURE_ERROR_MODE
            mode = f"{CAPTURE_ERROR_MODE} (argument)"
        else:
            lent = stack.enter_context(_lend_capture_mode(CAPTURE_ERROR_MODE))
            mode = f"{CAPTURE_ERROR_MODE} (lent to torch.cuda.graph)" if lent else "global (torch's default)"
        override = getattr(torch.autograd.graph, "set_override_stale_capture_stream", None)
        if override is not None:
            override(True)
            stack.callback(override, False)  # the process-initial state
        if report is not None:
            report["capture_mode"] = mode
            report["stale_stream_override"] = override is not None
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        try:
            return torch.cuda.make_graphed_callables(module, sample, **kwargs)
        finally:
            if report is not None and caught:
                seen = report.setdefault("capture_warnings", [])
                for w in caught:
                    text = f"{w.category.__name__}: {str(w.message)[:200]}"
                    if text not in seen and len(seen) < 5:
                        seen.append(text)


_PRIMED: set = set()  # devices on which this process has made its first CUDA-graph capture


def _prime_capture(device: torch.device, autocast) -> str | None:
    """Once per process and device: capture (and throw away) a tiny module's forward and backward.

    Returns "ok" or the error of that first capture, or None if the process had captured before.
    """
    if str(device) in _PRIMED:
        return None
    _PRIMED.add(str(device))
    module = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64)).to(device)
    sample = torch.randn(32, 64, device=device, requires_grad=True)
    try:
        with autocast:
            graphed = _make_graphed(module, (sample,))
        graphed(sample).float().sum().backward()
        return "ok"
    except Exception as err:  # noqa: BLE001 - reported; the real capture follows either way
        return f"{type(err).__name__}: {str(err)[:160]}"


def _can_capture(device: torch.device) -> bool:
    """Whether CUDA graphs can record on ``device`` (a seam: the tests run the graph path on a CPU)."""
    return device.type == "cuda"


class _Forward(nn.Module):
    """The model's call as a module of its own, so that CUDA graphs capture it and leave the model as it is."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, src, tgt_in, src_mask, tgt_mask):
        return self.model(src, tgt_in, src_mask, tgt_mask)


class _GraphedForward:
    """The training forward and its backward replayed from CUDA graphs; other calls run eagerly.

    ``torch.cuda.make_graphed_callables`` records the kernels of one forward and one backward pass
    on ``sample`` (a batch of the padded shape) and replays them for every later batch of that
    shape: one launch instead of thousands. A batch of another shape, or a call without autograd,
    runs the model as it is. The model's own ``forward`` is not patched, so evaluations and probes
    that call the model see the plain module. ``capture`` is ``make_graphed_callables``; the tests
    pass a stand-in to check the dispatch on a CPU.
    """

    def __init__(self, model: nn.Module, sample: tuple, autocast, capture=None, report: dict | None = None):
        if capture is None:
            capture = lambda module, args: _make_graphed(module, args, report)  # noqa: E731
        self.model = model
        self.shapes = [tuple(t.shape) for t in sample]
        with autocast:  # mixed precision inside the graph (its cast cache must be disabled)
            self.graphed = capture(_Forward(model), tuple(sample))
        self.replays = 0

    def __call__(self, src, tgt_in, src_mask, tgt_mask):
        args = (src, tgt_in, src_mask, tgt_mask)
        if torch.is_grad_enabled() and [tuple(t.shape) for t in args] == self.shapes:
            self.replays += 1
            return self.graphed(*args)
        return self.model(*args)


class _SpeedProbe:
    """Times eager steps, applies a speed-up, times its steps, and keeps it only if they are faster.

    The speed-up is ``torch.compile`` (``method="compile"``) or CUDA graphs (``"cuda_graphs"``).
    Both timings come from the same run, on the same stream of batches: steps ``[a, b)`` run eager,
    step ``b`` compiles or captures (its time minus an eager step's is that cost), steps ``[c, d)``
    run sped up. Timing a window synchronizes the GPU only at its two ends.
    """

    CAPTURE_ATTEMPTS = 3

    def __init__(self, cfg: TrainConfig, device: torch.device, sync_clock, method: str = "compile", autocast=None):
        n = cfg.steps  # the step cap (a time-budgeted run may stop earlier)
        width = 30 if n >= 200 else max(2, n // 8)
        self.a = 5 if n >= 200 else 1
        self.b = self.a + width
        self.c, self.d = self.b + 3, self.b + 3 + width
        self.device, self.sync_clock, self.method, self.autocast = device, sync_clock, method, autocast
        self.report: dict = {"method": method, "decision": "not reached"}
        if method == "compile":
            # Inductor on a GPU; on a CPU (CI's smoke runs) only dynamo's tracing, with the "eager"
            # backend, so that the code path runs in seconds (inductor's C++ build takes minutes per graph).
            self.backend = "inductor" if device.type == "cuda" else "eager"
            self.report["backend"] = self.backend
        self.marks: dict[int, float] = {}
        self.eager_model = None
        self.graphed: _GraphedForward | None = None

    # The report's names for the sped-up steps and their one-off cost.
    @property
    def _names(self) -> tuple[str, str, str]:
        if self.method == "compile":
            return "compiled_ms_per_step", "compile_s", "compiled"
        return "graphed_ms_per_step", "capture_s", "cuda graphs"

    def before_step(self, step: int, model, sample: tuple = ()):
        """The model to run at ``step`` (compiles or captures it at step b, ``sample`` is that step's batch)."""
        if step in (self.a, self.b, self.c, self.d):
            self.marks[step] = self.sync_clock()
        if step != self.b:
            return model
        self.eager_model = model
        if self.method == "compile":
            from torch import _dynamo

            self.graphs_before = _dynamo_graphs()
            for name in ("recompile_limit", "cache_size_limit"):  # bound the recompilations (torch >= 2.6 / older)
                if hasattr(_dynamo.config, name):
                    setattr(_dynamo.config, name, 8)
            return torch.compile(model, dynamic=False, backend=self.backend)
        if not _can_capture(self.device):
            self.report["decision"] = "eager (CUDA graphs need a CUDA device)"
            self.eager_model = None
            return model
        # Measured on an H200 (torch 2.11): in every fresh process, the first run's capture failed
        # with cudaErrorStreamCaptureInvalidated, three attempts in a row, and the captures of all
        # later runs in the same process succeeded; the cause is not known. Remedies, none
        # measured yet: the process's first capture is a throwaway one of a tiny module
        # (_prime_capture), in case what fails is a first capture as such; captures run in
        # "thread_local" mode and with stale streams overridden where torch can (_make_graphed);
        # and the loop frees each step's autograd graph before the next (`del logits, loss`).
        # A failed capture is tried again (errors and warnings are kept in the report) before
        # the run falls back to eager steps.
        priming = _prime_capture(self.device, self.autocast)
        if priming is not None:
            self.report["priming_capture"] = priming
        for attempt in range(1, self.CAPTURE_ATTEMPTS + 1):
            try:
                self.graphed = _GraphedForward(model, sample, self.autocast, report=self.report)
            except Exception as err:  # noqa: BLE001 - a capture failure: report it, retry, then train eagerly
                self.report.setdefault("capture_errors", []).append(f"{type(err).__name__}: {str(err)[:160]}")
                if attempt == self.CAPTURE_ATTEMPTS:
                    return self.failed(err)
                torch.cuda.synchronize(self.device)
                continue
            self.report["capture_attempts"] = attempt
            return self.graphed

    def after_step(self, step: int, model):
        """Record the timings; returns the model to keep (eager again if the speed-up did not win)."""
        if self.eager_model is None and step >= self.b:  # failed, or not applicable here
            return model
        fast_key, cost_key, kept = self._names
        if step + 1 == self.b and self.a in self.marks:
            self.eager_ms = 1000 * (self.sync_clock() - self.marks[self.a]) / (self.b - self.a)
            self.marks[self.b] = self.sync_clock()
            self.report["eager_ms_per_step"] = round(self.eager_ms, 3)
        if step == self.b and self.b in self.marks:
            first = self.sync_clock() - self.marks[self.b]
            self.report[cost_key] = round(first - self.eager_ms / 1000, 2)
        if step + 1 == self.d and self.c in self.marks:
            fast_ms = 1000 * (self.sync_clock() - self.marks[self.c]) / (self.d - self.c)
            self.report[fast_key] = round(fast_ms, 3)
            if self.method == "compile":
                self.report["graphs"] = _dynamo_graphs() - self.graphs_before
            self.report["speedup"] = round(self.eager_ms / fast_ms, 3)
            if fast_ms < self.eager_ms:
                self.report["decision"] = kept
            else:
                self.report["decision"] = f"eager ({kept} steps were not faster)"
                self.graphed = None
                return self.eager_model
        return model

    def compiling(self, step: int) -> bool:
        return self.method == "compile" and step == self.b and self.eager_model is not None

    def failed(self, err: Exception):
        """The speed-up failed (at compile or capture): back to eager, and say why."""
        verb = "compile" if self.method == "compile" else "capture"
        self.report["decision"] = f"eager ({verb} failed: {type(err).__name__}: {str(err)[:200]})"
        self.report["compile_s" if self.method == "compile" else "capture_s"] = None
        model, self.eager_model = self.eager_model, None
        return model

    def finish(self, step: int) -> dict:
        if self.method == "compile" and "graphs" not in self.report and hasattr(self, "graphs_before"):
            self.report["graphs"] = _dynamo_graphs() - self.graphs_before
        if self.graphed is not None:
            self.report["graph_replays"] = self.graphed.replays
        self.report["steps_run"] = step
        return self.report


def train(cfg: TrainConfig, data: TaskData | None = None, device: torch.device | str | None = None, *,
          batches=None, on_backward=None, on_step=None) -> TrainResult:
    """Train a Transformer as ``cfg`` says and return it with its log (and save it if ``cfg.out``).

    ``data`` (a :class:`TaskData`) is built from the task module when None; the notebook passes
    one so that several runs share a split. Under ``torchrun`` every rank calls this function.

    Hooks for experiments (both get the plain module, not a compiled or DDP wrapper):
    ``on_backward(step, model)`` runs after the backward pass, before clipping and the update,
    when the gradients are the true ones; ``on_step(step, model, loss)`` runs after the update
    (``loss`` is the step's loss, a 0-dim tensor on the device: reading it waits for the GPU).
    ``batches`` replaces the training stream (an iterator of the same 5-tuples), so that several
    runs can see identical batches.
    """
    from .evaluate import exact_match

    info = setup_distributed()
    if device is None:
        device = torch.device("cuda", info.local_rank) if torch.cuda.is_available() and info.active else runtime.device()
    device = torch.device(device)
    data = TaskData.build(cfg) if data is None else data

    model, mcfg = init_model(cfg, data)
    model = model.to(device)
    raw = model
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, cfg.beta2),
                                  **({"fused": True} if device.type == "cuda" else {}))
    autocast, amp_dtype = _precision_context(cfg, device)
    if cfg.cuda_graphs and amp_dtype is not None and device.type == "cuda":
        # CUDA graphs record the casts too: autocast's cache of cast weights must be off.
        autocast = torch.autocast(device_type="cuda", dtype=amp_dtype, cache_enabled=False)
    # A scaler only for float16, whose 5-bit exponent lets small gradients underflow to zero.
    scaler = torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=amp_dtype == torch.float16)
    if info.active and cfg.cuda_graphs:
        raise ValueError("cuda_graphs is for one process on one GPU; under torchrun (DDP) leave it off")
    if info.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    if batches is None:
        batches = data.stream(per_rank_batch(cfg, info.world_size), rank_seed(cfg, info.rank), cfg.data_workers,
                              cfg.pad_multiple)
    pad = data.tgt_vocab.PAD
    val_examples = data.val_sample(cfg.eval_examples) if info.is_main else []

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, disable=not (cfg.progress and info.is_main), desc="train", unit="step",
               mininterval=1.0, file=sys.stderr, dynamic_ncols=True)
    log: list[dict] = []
    # Running sums stay on the device: reading them (.item()) waits for the GPU, so do it only when logging.
    zero = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
    run_loss, run_correct, run_count, tokens = zero(), zero(), zero(), zero()
    eval_s = 0.0
    start = time.perf_counter()

    def sync_clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    probe = None
    if cfg.compile or cfg.cuda_graphs:
        probe = _SpeedProbe(cfg, device, sync_clock, "compile" if cfg.compile else "cuda_graphs", autocast)
    step, val_em, train_s, lr = 0, None, 0.0, cfg.lr
    diverged_step = None
    sums = {"loss": run_loss, "correct": run_correct, "count": run_count}

    def evaluate(now: float) -> float:
        """Exact match on the validation sample (its time is kept out of the training time)."""
        nonlocal eval_s
        raw.eval()
        em = exact_match(raw, val_examples, data.src_vocab, data.tgt_vocab, autocast=autocast)
        raw.train()
        eval_s += sync_clock() - now
        return em

    def write_record(evaluate_now: bool) -> float | None:
        """Append one log record (and run an evaluation): everything that waits for the device."""
        nonlocal eval_s
        now = sync_clock()
        train_time = now - eval_s
        em = None
        count = max(sums["count"].item(), 1.0)
        loss_value = sums["loss"].item() / count
        if evaluate_now and cfg.eval_examples and math.isfinite(loss_value):
            em = evaluate(now)
        log.append({
            "step": step,
            "wall_s": round(time.perf_counter() - start, 3),
            "train_s": round(train_time, 3),
            "tokens": int(tokens.item()) * info.world_size,
            "tokens_per_s": round(tokens.item() * info.world_size / max(train_time, 1e-9), 1),
            "loss": round(loss_value, 5) if math.isfinite(loss_value) else loss_value,
            "token_accuracy": round(sums["correct"].item() / count, 5),
            "lr": lr,
            "val_exact_match": em,
        })
        for t in sums.values():
            t.zero_()
        if evaluate_now and cfg.out and math.isfinite(loss_value):  # a checkpoint at every evaluation
            save_checkpoint(cfg.out, make_result())
        return em

    def make_result() -> TrainResult:
        return TrainResult(raw, cfg, mcfg, data.src_vocab, data.tgt_vocab, log, device=runtime.device_name(device),
                           precision="float32" if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
                           diverged=diverged_step is not None, diverged_step=diverged_step,
                           compile_report=probe.finish(step) if probe is not None else {})

    model.train()
    while step < cfg.steps:
        progress = None
        if cfg.time_budget_s > 0:
            train_s = time.perf_counter() - start - eval_s
            progress = _agree(train_s / cfg.time_budget_s, info, device)
            if progress >= 1.0:
                break
        lr = cfg.lr * lr_factor(cfg, step, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        src, tgt_in, tgt_out, src_mask, tgt_mask = (t.to(device, non_blocking=True) for t in next(batches))
        if probe is not None:
            model = probe.before_step(step, model, (src, tgt_in, src_mask, tgt_mask))

        def forward_backward(model):
            with autocast:
                logits = model(src, tgt_in, src_mask, tgt_mask)
            loss = sequence_loss(logits, tgt_out, pad, cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            return logits, loss

        if probe is not None and probe.compiling(step):
            try:  # the first compiled step compiles; a compiler error must not end the run
                logits, loss = forward_backward(model)
            except Exception as err:  # noqa: BLE001 - any compiler failure: report it, train eagerly
                model = probe.failed(err)
                logits, loss = forward_backward(model)
        else:
            logits, loss = forward_backward(model)
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        if on_backward is not None:
            on_backward(step, raw)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            keep = ~tgt_mask
            n = keep.sum()
            sums["correct"] += ((logits.argmax(-1) == tgt_out) & keep).sum()
            sums["count"] += n
            sums["loss"] += loss.detach() * n
            tokens += n + (~src_mask).sum()
        if on_step is not None:
            on_step(step, raw, loss.detach())
        if probe is not None:
            model = probe.after_step(step, model)
        # Let go of this step's autograd graph now: kept alive into the next step, its
        # AccumulateGrad nodes (created on the default stream) would be reused by a CUDA-graph
        # capture on a side stream, which then syncs with the default stream and fails
        # (torch 2.11 warned of exactly this in the H200 runs whose first capture failed with
        # cudaErrorStreamCaptureInvalidated; that this removes the failure is not yet measured).
        del logits, loss
        step += 1
        bar.update(1)

        done = step == cfg.steps
        evaluate_now = step % cfg.eval_interval == 0 or done
        if (step % cfg.log_interval == 0 or evaluate_now) and info.is_main:
            em = write_record(evaluate_now)
            val_em = val_em if em is None else em
            bar.set_postfix(loss=f"{log[-1]['loss']:.3f}", val_em="-" if val_em is None else f"{val_em:.3f}")
            if not math.isfinite(log[-1]["loss"]):
                diverged_step = step
                if cfg.stop_on_nonfinite:
                    break
    if info.is_main and step and (not log or log[-1]["step"] != step):  # stopped by the time budget
        write_record(True)
        if diverged_step is None and not math.isfinite(log[-1]["loss"]):
            diverged_step = step
    elif (info.is_main and log and cfg.eval_examples and log[-1]["val_exact_match"] is None
          and math.isfinite(log[-1]["loss"])):
        # Stopped by the time budget just after a log record (not an evaluation): evaluate the
        # final model into that record, so that a run's last record always carries its score.
        log[-1]["val_exact_match"] = evaluate(sync_clock())
    bar.close()

    result = make_result()
    if cfg.out and info.is_main and not result.diverged:
        result.checkpoint = str(save_checkpoint(cfg.out, result))
    if info.active:
        import torch.distributed as dist

        dist.barrier()
    return result


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, result: TrainResult, dtype: torch.dtype | None = None) -> Path:
    """Write model weights, both configs, both vocabularies and the training log (plain types only).

    The weights are stored in the teaching layout (a fast model's state dict is the same), and the
    model config with ``fast=False``: the checkpoint describes the function, which either
    configuration computes. ``dtype`` (e.g. ``torch.bfloat16``) rounds floating-point weights
    for a smaller file; loading casts them back to float32.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in _raw(result.model).state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "resnorm_version": __version__,
        "torch_version": str(torch.__version__),
        "device": result.device,
        "precision": result.precision,
        "train_config": result.config.to_dict(),
        "model_config": {**dataclasses.asdict(result.model_config), "fast": False},
        "final_norm": result.config.final_norm,
        "weights_dtype": str(dtype or torch.float32).replace("torch.", ""),
        "src_vocab": result.src_vocab.to_dict(),
        "tgt_vocab": result.tgt_vocab.to_dict(),
        "log": result.log,
        "model_state": state,
    }
    torch.save(payload, path)
    return path


def config_diff(expected: dict, found: dict) -> list[str]:
    """``["d_model: expected 128, checkpoint has 64", ...]`` for the fields that differ."""
    keys = sorted(set(expected) | set(found))
    return [f"{k}: expected {expected.get(k, '<missing>')!r}, checkpoint has {found.get(k, '<missing>')!r}"
            for k in keys if expected.get(k, "<missing>") != found.get(k, "<missing>")]


def load_checkpoint(path: str | Path | None = None) -> dict:
    """Read a checkpoint with ``weights_only=True`` (default: the one shipped with the package)."""
    path = SHIPPED_CHECKPOINT if path is None else Path(path)
    if not path.is_file():
        hint = " (the package should ship it; reinstall resnorm)" if path == SHIPPED_CHECKPOINT else ""
        raise FileNotFoundError(f"no checkpoint at {path}{hint}; train one with `python -m resnorm.train out={path}`")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a resnorm translator checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return payload


def build_model(payload: dict, expected_config=None, fast: bool = False) -> nn.Module:
    """The model a checkpoint describes, with its weights.

    If ``expected_config`` (a TransformerConfig, a TrainConfig or a dict) is given and the
    checkpoint was trained with another architecture, say which fields differ instead of
    letting ``load_state_dict`` fail on the first mismatched tensor shape.
    """
    from .transformer import Transformer, TransformerConfig

    found = payload["model_config"]
    if expected_config is not None:
        if isinstance(expected_config, TrainConfig):  # compare the model fields it sets (not the vocabularies)
            expected = _model_kwargs(expected_config, found.get("src_vocab_size"), found.get("tgt_vocab_size"))
        elif dataclasses.is_dataclass(expected_config):
            expected = dataclasses.asdict(expected_config)
        else:
            expected = dict(expected_config)
        expected.pop("fast", None)  # an implementation choice, not part of the function
        diff = config_diff(expected, {k: v for k, v in found.items() if k in expected})
        if diff:
            raise ValueError("checkpoint was trained with another model configuration; differing fields: "
                             + "; ".join(diff))
    try:
        model = Transformer(TransformerConfig(**{**found, "fast": fast}))
        if not payload.get("final_norm", True):
            model.encoder.norm = model.decoder.norm = None
    except TypeError as err:  # a field this version of resnorm does not know
        raise ValueError(f"the checkpoint's model config does not fit this version of resnorm: {err}") from None
    try:
        state = {k: v.float() if v.is_floating_point() else v for k, v in payload["model_state"].items()}
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint weights do not fit the model its config describes ({found}): {err}") from None
    return model.eval()


def state_digest(model: nn.Module) -> str:
    """SHA-256 of all parameters and buffers, in name order: equal digests = identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(_raw(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> TrainResult:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_args(argv)
    except ValueError as err:
        raise SystemExit(f"python -m resnorm.train: {err}") from None
    info = setup_distributed()
    if info.is_main:
        print(runtime.describe() + (f"  ddp_world_size={info.world_size}" if info.active else ""))
        print("config:", json.dumps(cfg.to_dict()))
    result = train(cfg)
    if info.is_main:
        last = result.log[-1] if result.log else {}
        print(f"done: {last.get('step', 0)} steps in {last.get('train_s', 0):.1f} s of training, "
              f"loss {last.get('loss', float('nan')):.4f}, validation exact match {last.get('val_exact_match')}, "
              f"{last.get('tokens_per_s', 0):.0f} tokens/s")
        if result.checkpoint:
            print(f"checkpoint: {result.checkpoint}")
    return result


if __name__ == "__main__":
    main()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
