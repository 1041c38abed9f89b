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
SHIPPED_CHECKPOINT = CHECKPOINT_DIR / "numbers_zh_en.pt"
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
    # data
    n_test: int = 20_000  # held-out expressions (the task module stratifies them)
    batch_size: int = 256  # expressions per optimizer step, summed over all DDP ranks
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
    grad_clip: float = 1.0
    seed: int = 0
    # bookkeeping
    log_interval: int = 25
    eval_interval: int = 250
    eval_examples: int = 1000  # validation expressions decoded at each evaluation
    data_workers: int = 0  # DataLoader processes generating batches (a GPU outruns one Python process)
    compile: bool = False
    precision: str = "auto"
    progress: bool = True
    out: str = ""  # checkpoint path written at the end ("" = do not save)

    def __post_init__(self) -> None:
        problems = []
        for name in ("d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff", "batch_size",
                     "steps", "log_interval", "eval_interval", "eval_examples", "n_test"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % max(self.n_heads, 1):
            problems.append(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.grad_clip <= 0:
            problems.append(f"lr and grad_clip must be positive, got lr={self.lr}, grad_clip={self.grad_clip}")
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
                eval_interval=100, eval_examples=300),
    # One GPU, 9 minutes of training. Reasoned from the CPU runs, not yet run on a GPU (see the chapter).
    # 5.5M parameters: its float32 checkpoint (22 MB) still fits the repository's 25 MB limit.
    "full": dict(d_model=256, n_heads=8, n_encoder_layers=3, n_decoder_layers=3, d_ff=1024,
                 batch_size=1024, steps=50_000, time_budget_s=540.0, lr=1e-3, warmup_steps=500,
                 eval_interval=500, eval_examples=2000, compile=True, data_workers=6),
}


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
    return TrainConfig(**{**PRESETS[preset], **overrides, "preset": preset})


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
    ``progress`` in [0, 1] is the fraction of the run done; by default ``step / steps``,
    but a time-budgeted run passes the fraction of its time budget instead.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "inverse_sqrt":
        return math.sqrt(max(cfg.warmup_steps, 1) / (step + 1))
    if progress is None:
        span = max(cfg.steps - cfg.warmup_steps, 1)
        progress = (step - cfg.warmup_steps) / span
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
                  norm_first=cfg.norm_first,
                  src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size)
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
    that. Every (rank, worker) pair has its own random stream.
    """

    def __init__(self, held_out: set[str], batch_size: int, seed: int, src_vocab, tgt_vocab, pool_batches: int = 16):
        self.held_out, self.batch_size, self.seed, self.pool_batches = held_out, batch_size, seed, pool_batches
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab

    def __iter__(self):
        import random

        from . import tasks

        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id + 1
        rng = random.Random(self.seed * 10_007 + worker)
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
            for chunk in chunks:
                b = tasks.encode_batch(chunk, self.src_vocab, self.tgt_vocab)
                yield b.src, b.tgt_in, b.tgt_out, b.src_key_padding_mask, b.tgt_key_padding_mask


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

    def stream(self, batch_size: int, seed: int, workers: int = 0):
        """An iterator of ``(src, tgt_in, tgt_out, src_mask, tgt_mask)`` training batches."""
        dataset = TrainStream(self.held_out, batch_size, seed, self.src_vocab, self.tgt_vocab)
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
    return Transformer(mcfg), mcfg


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
    src = next(data.stream(per_rank_batch(cfg, world_size), rank_seed(cfg, rank), cfg.data_workers))[0]
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


def train(cfg: TrainConfig, data: TaskData | None = None, device: torch.device | str | None = None) -> TrainResult:
    """Train a Transformer as ``cfg`` says and return it with its log (and save it if ``cfg.out``).

    ``data`` (a :class:`TaskData`) is built from the task module when None; the notebook passes
    one so that several runs share a split. Under ``torchrun`` every rank calls this function.
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
    # A scaler only for float16, whose 5-bit exponent lets small gradients underflow to zero.
    scaler = torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=amp_dtype == torch.float16)
    if info.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        if device.type == "cuda":
            model = torch.compile(model, dynamic=True)
        elif info.is_main:
            print("compile=True ignored: torch.compile is used on a GPU only", file=sys.stderr)

    batches = data.stream(per_rank_batch(cfg, info.world_size), rank_seed(cfg, info.rank), cfg.data_workers)
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

    step, val_em, train_s, lr = 0, None, 0.0, cfg.lr
    sums = {"loss": run_loss, "correct": run_correct, "count": run_count}

    def write_record(evaluate_now: bool) -> float | None:
        """Append one log record (and run an evaluation): everything that waits for the device."""
        nonlocal eval_s
        now = sync_clock()
        train_time = now - eval_s
        em = None
        if evaluate_now:
            model.eval()
            em = exact_match(raw, val_examples, data.src_vocab, data.tgt_vocab, autocast=autocast)
            model.train()
            eval_s += sync_clock() - now
        count = max(sums["count"].item(), 1.0)
        log.append({
            "step": step,
            "wall_s": round(time.perf_counter() - start, 3),
            "train_s": round(train_time, 3),
            "tokens": int(tokens.item()) * info.world_size,
            "tokens_per_s": round(tokens.item() * info.world_size / max(train_time, 1e-9), 1),
            "loss": round(sums["loss"].item() / count, 5),
            "token_accuracy": round(sums["correct"].item() / count, 5),
            "lr": lr,
            "val_exact_match": em,
        })
        for t in sums.values():
            t.zero_()
        if evaluate_now and cfg.out:  # a checkpoint at every evaluation: an interrupted run keeps its progress
            save_checkpoint(cfg.out, make_result())
        return em

    def make_result() -> TrainResult:
        return TrainResult(raw, cfg, mcfg, data.src_vocab, data.tgt_vocab, log, device=runtime.device_name(device),
                           precision="float32" if amp_dtype is None else str(amp_dtype).replace("torch.", ""))

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
        with autocast:
            logits = model(src, tgt_in, src_mask, tgt_mask)
        loss = sequence_loss(logits, tgt_out, pad, cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            keep = ~tgt_mask
            n = keep.sum()
            sums["correct"] += ((logits.argmax(-1) == tgt_out) & keep).sum()
            sums["count"] += n
            sums["loss"] += loss.detach() * n
            tokens += n + (~src_mask).sum()
        step += 1
        bar.update(1)

        done = step == cfg.steps
        evaluate_now = step % cfg.eval_interval == 0 or done
        if (step % cfg.log_interval == 0 or evaluate_now) and info.is_main:
            em = write_record(evaluate_now)
            val_em = val_em if em is None else em
            bar.set_postfix(loss=f"{log[-1]['loss']:.3f}", val_em="-" if val_em is None else f"{val_em:.3f}")
    if info.is_main and step and (not log or log[-1]["step"] != step):  # stopped by the time budget
        write_record(True)
    bar.close()

    result = make_result()
    if cfg.out and info.is_main:
        result.checkpoint = str(save_checkpoint(cfg.out, result))
    if info.active:
        import torch.distributed as dist

        dist.barrier()
    return result


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, result: TrainResult) -> Path:
    """Write model weights, both configs, both vocabularies and the training log (plain types only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in _raw(result.model).state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "resnorm_version": __version__,
        "torch_version": str(torch.__version__),
        "device": result.device,
        "precision": result.precision,
        "train_config": result.config.to_dict(),
        "model_config": dataclasses.asdict(result.model_config),
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


def build_model(payload: dict, expected_config=None) -> nn.Module:
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
        diff = config_diff(expected, {k: v for k, v in found.items() if k in expected})
        if diff:
            raise ValueError("checkpoint was trained with another model configuration; differing fields: "
                             + "; ".join(diff))
    try:
        model = Transformer(TransformerConfig(**found))
    except TypeError as err:  # a field this version of resnorm does not know
        raise ValueError(f"the checkpoint's model config does not fit this version of resnorm: {err}") from None
    try:
        model.load_state_dict(payload["model_state"], strict=True)
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
