"""Decoding and evaluation of the number translator: greedy and beam search, exact match, attention.

* :func:`beam_search` (batched; ``beam_size=1`` is greedy decoding, which a test asserts);
* :func:`evaluate`: exact match overall, by category and by stratum (the task's length buckets
  and its zero-heavy numbers), plus the list of remaining errors;
* :class:`Translator`: a trained model with its vocabularies, for ``translate("三分之二")`` and
  its cross-attention map; inputs outside the task get a clear :class:`OutsideTaskError`.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .transformer import Transformer, greedy_decode


class OutsideTaskError(ValueError):
    """The input cannot be one of the task's expressions (unknown characters, empty, too long, malformed)."""


# --------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------


@torch.no_grad()
def beam_search(model: Transformer, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int,
                beam_size: int = 4, src_key_padding_mask: torch.Tensor | None = None,
                length_penalty: float = 0.0) -> torch.Tensor:
    """Batched beam search; returns (B, L) token ids starting with ``bos_id``, padded after EOS.

    Each source keeps ``beam_size`` hypotheses ranked by the sum of token log-probabilities.
    A hypothesis that has emitted EOS is frozen (it may only add PAD at no cost). At the end
    hypotheses are ranked by ``score / length ** length_penalty`` (0 = plain log-probability,
    which suits a task with one right answer per input). With ``beam_size=1`` every step keeps
    the single most probable token: greedy decoding.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    was_training = model.training
    model.eval()
    try:
        pad = model.config.pad_id
        B, k, dev = src.shape[0], beam_size, src.device
        memory = model.encode(src, src_key_padding_mask)
        memory = memory.repeat_interleave(k, dim=0)  # (B*k, S, d): row b*k + j is beam j of source b
        mask = None if src_key_padding_mask is None else src_key_padding_mask.repeat_interleave(k, dim=0)
        seqs = torch.full((B * k, 1), bos_id, dtype=torch.long, device=dev)
        scores = torch.full((B, k), float("-inf"), device=dev)
        scores[:, 0] = 0.0  # start from one hypothesis, not k copies of it
        done = torch.zeros(B * k, dtype=torch.bool, device=dev)
        lengths = torch.zeros(B * k, device=dev)
        for _ in range(max_len):
            logp = model.decode(seqs, memory, mask)[:, -1].float().log_softmax(-1)  # (B*k, V)
            V = logp.shape[-1]
            frozen = torch.full_like(logp, float("-inf"))
            frozen[:, pad] = 0.0
            logp = torch.where(done[:, None], frozen, logp)
            total = (scores.view(B * k, 1) + logp).view(B, k * V)
            scores, flat = total.topk(k, dim=-1)  # (B, k)
            beam = flat // V + torch.arange(B, device=dev)[:, None] * k
            token = (flat % V).view(-1)
            beam = beam.view(-1)
            seqs = torch.cat([seqs[beam], token[:, None]], dim=1)
            lengths = lengths[beam] + (~done[beam]).float()
            done = done[beam] | (token == eos_id)
            if bool(done.all()):
                break
        ranked = scores.view(-1) / lengths.clamp(min=1) ** length_penalty if length_penalty else scores.view(-1)
        best = ranked.view(B, k).argmax(dim=-1) + torch.arange(B, device=dev) * k
        return seqs[best]
    finally:
        model.train(was_training)


def decode_ids(model: Transformer, src: torch.Tensor, src_key_padding_mask: torch.Tensor, bos_id: int, eos_id: int,
               max_len: int, beam_size: int = 1) -> torch.Tensor:
    """Greedy decoding (the model module's :func:`greedy_decode`) for beam 1, else :func:`beam_search`."""
    if beam_size == 1:
        return greedy_decode(model, src, bos_id, eos_id, max_len, src_key_padding_mask)
    return beam_search(model, src, bos_id, eos_id, max_len, beam_size, src_key_padding_mask)




# --------------------------------------------------------------------------------------
# Batched prediction, exact match and the evaluation report
# --------------------------------------------------------------------------------------


def _max_target_len() -> int:
    from . import tasks

    return tasks.MAX_TARGET_LEN + 1  # room for EOS


def encode_sources(sources: Sequence[str], src_vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the sources' ids into ``(B, S)`` and return it with its key padding mask (True = PAD)."""
    rows = [src_vocab.encode(s) for s in sources]
    width = max(1, max(map(len, rows)))
    src = torch.full((len(rows), width), src_vocab.PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        src[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return src, src == src_vocab.PAD


@torch.no_grad()
def predict(model: Transformer, sources: Sequence[str], src_vocab, tgt_vocab, beam_size: int = 1,
            batch_size: int = 500, autocast=None, max_len: int | None = None) -> list[str]:
    """English for each Chinese source, decoded in batches of similar length (less padding)."""
    device = next(model.parameters()).device
    max_len = _max_target_len() if max_len is None else max_len
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[str] = [""] * len(sources)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        src, mask = encode_sources([sources[i] for i in idx], src_vocab)
        src, mask = src.to(device), mask.to(device)
        with (contextlib.nullcontext() if autocast is None else autocast):
            ids = decode_ids(model, src, mask, tgt_vocab.BOS, tgt_vocab.EOS, max_len, beam_size)
        for i, row in zip(idx, ids.tolist()):
            out[i] = tgt_vocab.decode(row)
    return out


def exact_match(model: Transformer, examples: Sequence, src_vocab, tgt_vocab, beam_size: int = 1,
                autocast=None) -> float:
    """Fraction of ``examples`` whose whole translation is right, token for token."""
    if not examples:
        raise ValueError("exact_match needs at least one example")
    preds = predict(model, [e.source for e in examples], src_vocab, tgt_vocab, beam_size, autocast=autocast)
    return sum(p == e.target for p, e in zip(preds, examples)) / len(examples)


GROUP_KINDS = ("category", "stratum")


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % confidence interval of a proportion ``correct / n`` (Wilson score interval).

    Unlike the textbook ``p ± z·sqrt(p(1-p)/n)``, it stays inside [0, 1] and does not shrink to a
    point when every answer is right: 2,857 right out of 2,857 gives [0.99866, 1], not [1, 1].
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must lie in 0 .. n = {n}, got {correct}")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Report:
    """Exact match on a set of expressions, overall and per group, with the remaining errors."""

    n: int
    correct: int
    groups: dict[str, dict[str, tuple[int, int]]]  # group kind -> value -> (correct, total)
    errors: list[dict]
    seconds: float
    beam_size: int = 1

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    def table(self, kind: str) -> list[dict]:
        """One row per value of ``kind`` ("category" or "stratum"): n, errors, exact match and its 95 % CI."""
        rows = []
        for value, (ok, total) in sorted(self.groups[kind].items()):
            low, high = wilson_interval(ok, total)
            rows.append({kind: value, "n": total, "errors": total - ok, "exact_match": ok / total,
                         "95% CI": f"{100 * low:.2f}–{100 * high:.2f} %"})
        return rows

    @property
    def interval(self) -> tuple[float, float]:
        """95 % confidence interval of the overall exact match."""
        return wilson_interval(self.correct, self.n)

    def worst(self) -> tuple[str, str, float]:
        """(group kind, value, exact match) of the weakest group."""
        return min(((k, v, ok / t) for k, g in self.groups.items() for v, (ok, t) in g.items()), key=lambda x: x[2])


def evaluate(model: Transformer, examples: Sequence, src_vocab, tgt_vocab, beam_size: int = 1,
             autocast=None, group_kinds: Sequence[str] = GROUP_KINDS, batch_size: int = 500) -> Report:
    """Decode every example; count exact matches overall and per category and stratum."""
    import time

    if not examples:
        raise ValueError("evaluate needs at least one example")
    start = time.perf_counter()
    preds = predict(model, [e.source for e in examples], src_vocab, tgt_vocab, beam_size,
                    batch_size=batch_size, autocast=autocast)
    seconds = time.perf_counter() - start
    cells: dict[str, dict[str, list[int]]] = {k: defaultdict(lambda: [0, 0]) for k in group_kinds}
    errors, correct = [], 0
    for pred, ex in zip(preds, examples):
        ok = pred == ex.target
        correct += ok
        for kind in group_kinds:
            cell = cells[kind][getattr(ex, kind)]
            cell[0] += ok
            cell[1] += 1
        if not ok:
            errors.append({"source": ex.source, "expected": ex.target, "predicted": pred,
                           **{k: getattr(ex, k) for k in group_kinds}})
    groups = {k: {v: (c[0], c[1]) for v, c in g.items()} for k, g in cells.items()}
    return Report(len(examples), correct, groups, errors, seconds, beam_size)


# --------------------------------------------------------------------------------------
# A trained model, ready to use
# --------------------------------------------------------------------------------------


class Translator:
    """A trained model with its vocabularies: ``translate``, ``cross_attention``, ``plot_attention``.

    >>> tr = Translator.load()            # the checkpoint shipped with the package
    >>> tr.translate("三分之二")
    'two thirds'
    """

    def __init__(self, model: Transformer, src_vocab, tgt_vocab, meta: dict | None = None):
        self.model = model.eval()
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.meta = meta or {}

    @classmethod
    def load(cls, path: str | Path | None = None, expected_config=None) -> "Translator":
        """From a checkpoint (default: the one shipped with the package), read with weights_only=True."""
        from . import train
        from .tasks import Vocab

        payload = train.load_checkpoint(path)
        model = train.build_model(payload, expected_config)
        meta = {k: v for k, v in payload.items() if k != "model_state"}
        return cls(model, Vocab.from_dict(payload["src_vocab"]), Vocab.from_dict(payload["tgt_vocab"]), meta)

    @classmethod
    def from_result(cls, result) -> "Translator":
        """From what :func:`resnorm.train.train` returned."""
        return cls(result.model, result.src_vocab, result.tgt_vocab, {"log": result.log})

    @property
    def is_task_vocabulary(self) -> bool:
        from . import tasks

        return self.src_vocab == tasks.source_vocab()

    def check_source(self, text: str) -> str:
        """The stripped input, or :class:`OutsideTaskError` saying why the model cannot read it."""
        from . import tasks

        if not isinstance(text, str):
            raise OutsideTaskError(f"the input must be a string, got {type(text).__name__}")
        text = text.strip()
        if not text:
            raise OutsideTaskError("the input is empty; type a Chinese numerical expression such as 三分之二")
        unknown = sorted({c for c in self.src_vocab.tokenize(text) if c not in self.src_vocab or
                          self.src_vocab.stoi[c] < len(tasks.SPECIALS)})
        if unknown:
            known = "".join(self.src_vocab.itos[len(tasks.SPECIALS):])
            raise OutsideTaskError(
                f"{text!r} is outside the task: the character(s) {' '.join(map(repr, unknown))} never occur in "
                f"its Chinese numerical expressions, whose characters are {known}")
        if self.is_task_vocabulary:
            if len(text) > tasks.MAX_SOURCE_LEN:
                raise OutsideTaskError(f"{text!r} is outside the task: {len(text)} characters, the longest "
                                       f"expression of the task has {tasks.MAX_SOURCE_LEN}")
            try:
                tasks.parse_chinese(text)
            except ValueError as err:
                raise OutsideTaskError(f"{text!r} uses the task's characters but is not one of its expressions "
                                       f"(the model's output would mean nothing): {err}") from None
        return text

    def translate(self, text: str | Sequence[str], beam_size: int = 1):
        """English for one expression (a str) or for a list of them."""
        single = isinstance(text, str)
        texts = [self.check_source(t) for t in ([text] if single else text)]
        out = predict(self.model, texts, self.src_vocab, self.tgt_vocab, beam_size)
        return out[0] if single else out

    def reference(self, text: str) -> str:
        """The rule-based answer of the task's converters (for comparison)."""
        from . import tasks

        return tasks.to_english(tasks.parse_chinese(self.check_source(text)))

    @torch.no_grad()
    def cross_attention(self, text: str, layer: int = -1) -> dict:
        """Decode ``text`` greedily, then re-run the decoder on its own output and keep the
        cross-attention weights of decoder layer ``layer``: ``weights[h, t, s]`` is how much head
        ``h``, while producing output token ``t``, reads source character ``s``."""
        text = self.check_source(text)
        model = self.model
        src, mask = encode_sources([text], self.src_vocab)
        device = next(model.parameters()).device
        src, mask = src.to(device), mask.to(device)
        ids = greedy_decode(model, src, self.tgt_vocab.BOS, self.tgt_vocab.EOS, _max_target_len(), mask)[0].tolist()
        if self.tgt_vocab.EOS in ids:
            ids = ids[:ids.index(self.tgt_vocab.EOS) + 1]
        produced = ids[1:]
        attn = model.decoder.layers[layer].multihead_attn
        attn.store_attention = True
        try:
            # teacher-force the model's own output: position t of BOS + produced[:-1] predicts produced[t]
            model.decode(torch.tensor([ids[:-1]], device=device), model.encode(src, mask), mask)
            weights = attn.last_attention[0].float().cpu()
        finally:
            attn.store_attention, attn.last_attention = False, None
        return {
            "source_tokens": self.src_vocab.tokenize(text),
            "output_tokens": [self.tgt_vocab.itos[i] for i in produced],
            "translation": self.tgt_vocab.decode(ids),
            "weights": weights[:, :len(produced), :],
            "layer": layer % len(model.decoder.layers),
        }

    @staticmethod
    def _font_family() -> list[str]:
        """The installed fonts of the style's sans-serif list, as an explicit list of families:
        matplotlib falls back glyph by glyph only along such a list (to reach a CJK font for 三)."""
        import matplotlib as mpl
        from matplotlib import font_manager

        installed = {f.name for f in font_manager.fontManager.ttflist}
        return [name for name in mpl.rcParams["font.sans-serif"] if name in installed] or ["sans-serif"]

    def plot_attention(self, text: str, layer: int = -1, ax=None, title: bool = True):
        """Heat map of the cross-attention (averaged over heads) for one expression; returns the axes."""
        import matplotlib.pyplot as plt

        att = self.cross_attention(text, layer)
        w = att["weights"].mean(0).numpy()
        if ax is None:
            _, ax = plt.subplots(figsize=(0.32 * len(att["source_tokens"]) + 2.2, 0.26 * len(att["output_tokens"]) + 1.4))
        ax.imshow(w, aspect="auto", cmap="viridis", vmin=0, vmax=max(float(w.max()), 1e-6))
        family = self._font_family()
        ax.set_xticks(range(len(att["source_tokens"])), att["source_tokens"], fontsize=9, fontfamily=family)
        ax.set_yticks(range(len(att["output_tokens"])), att["output_tokens"], fontsize=8)
        ax.grid(False)
        ax.set_xlabel("source character (read)")
        ax.set_ylabel("output token (written)")
        if title:
            ax.set_title(f"{text} → {att['translation']}", fontsize=9, fontfamily=family)
        return ax


# --------------------------------------------------------------------------------------
# Summaries of a training log, and tables for the notebook
# --------------------------------------------------------------------------------------


def time_to_reach(log: Sequence[dict], threshold: float = 0.99) -> float | None:
    """Training seconds (evaluations excluded) at the first evaluation with exact match >= threshold."""
    for record in log:
        em = record.get("val_exact_match")
        if em is not None and em >= threshold:
            return record["train_s"]
    return None


def run_summary(log: Sequence[dict]) -> dict:
    """Steps, training time, throughput and the last validation exact match of a training log."""
    if not log:
        raise ValueError("the training log is empty")
    last = log[-1]
    evals = [r["val_exact_match"] for r in log if r.get("val_exact_match") is not None]
    return {
        "steps": last["step"],
        "train_s": last["train_s"],
        "tokens_per_s": last["tokens_per_s"],
        "final_loss": last["loss"],
        "val_exact_match": evals[-1] if evals else None,
        "time_to_99_s": time_to_reach(log, 0.99),
    }


def markdown_table(rows: Sequence[dict], formats: dict[str, str] | None = None) -> str:
    """A Markdown table of dict rows (the keys of the first row are the columns)."""
    if not rows:
        return "(no rows)"
    formats = formats or {}
    cols = list(rows[0])

    def cell(key, value):
        if value is None:
            return "–"
        if key in formats:
            return format(value, formats[key])
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(c, r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
