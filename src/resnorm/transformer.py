"""The encoder-decoder Transformer of Vaswani et al. (2017), with its residual and norm choices exposed.

Every sub-layer (self-attention, cross-attention, feed-forward) joins the residual stream
through one :class:`ResidualBranch` rule chosen in :class:`TransformerConfig`:

* Post-LN (``norm_first=False``, the 2017 paper): ``x = Norm(x + Dropout(F(x)))``
* Pre-LN  (``norm_first=True``): ``x = x + Dropout(F(Norm(x)))``, and one more Norm after the stack

Module names follow ``torch.nn.TransformerEncoderLayer``/``DecoderLayer`` (``self_attn``,
``multihead_attn``, ``ff.linear1``, ``ff.linear2``, ``norm1..3``), so that the ``to_torch_*``
helpers can copy weights across and the tests can assert equal outputs and gradients.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import BACKENDS, MultiHeadAttention, PackedMultiHeadAttention, causal_mask
from .norms import FusedLayerNorm, FusedRMSNorm, LayerNorm, RMSNorm

NORMS = ("layernorm", "rmsnorm", "dyt", "none")
RESIDUALS = ("standard", "none", "rezero", "deepnorm")
INITS = ("xavier", "gpt2", "deepnorm")
POSITIONALS = ("sinusoidal", "learned")
ACTIVATIONS = ("relu", "gelu")


def _choose(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name}={value!r}; valid options: {', '.join(repr(v) for v in valid)}")


@dataclass
class TransformerConfig:
    """Every knob of the model. The defaults are the base model of Vaswani et al. (2017), Table 3."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    dropout: float = 0.1
    max_len: int = 512
    norm_first: bool = False  # False: Post-LN as in 2017; True: Pre-LN with a final norm after each stack
    norm: str = "layernorm"  # "layernorm" | "rmsnorm" | "dyt" | "none"
    residual: str = "standard"  # "standard" | "none" | "rezero" | "deepnorm"
    init: str = "xavier"  # "xavier" | "gpt2" | "deepnorm"
    positional: str = "sinusoidal"  # | "learned"
    share_embeddings: bool = False  # one shared vocabulary: tie source/target embeddings and the output projection
    activation: str = "relu"
    layer_norm_eps: float = 1e-5
    attention_backend: str = "sdpa"  # | "math"
    pad_id: int = 0
    # The paper applies dropout only to sub-layer outputs and to the embedding sums (§5.4).
    # torch.nn.Transformer also drops attention weights and FFN hidden units with the same p;
    # set these two to `dropout` to reproduce that in training mode.
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    # The fast configuration: the same function and the same state dict, in fewer GPU kernels.
    # PyTorch's fused LayerNorm/RMSNorm kernels instead of the from-scratch ones, q/k/v projected
    # by one matrix product (k/v by one in cross-attention), and every attention mask built once
    # per batch instead of once per layer. The teaching code (fast=False) is what the chapters
    # read; the parity tests prove the two equal, and the GPU runs train the fast one.
    fast: bool = False

    def __post_init__(self):
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("n_encoder_layers", "n_decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                f"each head gets d_model / n_heads features"
            )
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        _choose("norm", self.norm, NORMS)
        _choose("residual", self.residual, RESIDUALS)
        _choose("init", self.init, INITS)
        _choose("positional", self.positional, POSITIONALS)
        _choose("activation", self.activation, ACTIVATIONS)
        _choose("attention_backend", self.attention_backend, BACKENDS)
        if self.residual == "deepnorm" and self.norm_first:
            raise ValueError("residual='deepnorm' is a Post-LN rule, Norm(alpha * x + F(x)); set norm_first=False")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                "share_embeddings=True needs one shared vocabulary, but src_vocab_size="
                f"{self.src_vocab_size} != tgt_vocab_size={self.tgt_vocab_size}"
            )
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(f"pad_id={self.pad_id} is not a token id of both vocabularies")


# ----------------------------------------------------------------------------- pieces


def make_norm(config: TransformerConfig) -> nn.Module:
    """The normalization layer named by ``config.norm`` (``"none"`` gives the identity)."""
    if config.norm == "layernorm":
        return (FusedLayerNorm if config.fast else LayerNorm)(config.d_model, eps=config.layer_norm_eps)
    if config.norm == "rmsnorm":
        return (FusedRMSNorm if config.fast else RMSNorm)(config.d_model, eps=config.layer_norm_eps)
    if config.norm == "dyt":
        from . import norms  # DyT lives in resnorm.norms; imported here so the rest works without it

        if not hasattr(norms, "DyT"):
            raise ValueError("norm='dyt' needs resnorm.norms.DyT, which this version of resnorm does not have")
        return norms.DyT(config.d_model)
    return nn.Identity()


def deepnorm_constants(n_encoder_layers: int, n_decoder_layers: int) -> dict[str, float]:
    """DeepNorm's (alpha, beta) for an encoder-decoder (Wang et al., 2022, DeepNet, Fig. 2).

    Encoder: alpha = 0.81 (N^4 M)^(1/16), beta = 0.87 (N^4 M)^(-1/16);
    decoder: alpha = (3M)^(1/4),           beta = (12M)^(-1/4), for N encoder and M decoder layers.
    """
    N, M = n_encoder_layers, n_decoder_layers
    return {
        "encoder_alpha": 0.81 * (N**4 * M) ** (1 / 16),
        "encoder_beta": 0.87 * (N**4 * M) ** (-1 / 16),
        "decoder_alpha": (3 * M) ** (1 / 4),
        "decoder_beta": (12 * M) ** (-1 / 4),
    }


class ResidualBranch(nn.Module):
    """How one sub-layer joins the residual stream: the shortcut rule and where the norm goes.

    ``forward(x, sublayer)``, where ``sublayer`` maps the (possibly normalized) input to the
    branch output. Dropout hits the branch output before the add (Vaswani et al., 2017, §5.4):

    * Post-LN: ``Norm(s * x + g * Dropout(F(x)))``; Pre-LN: ``s * x + g * Dropout(F(Norm(x)))``
    * ``standard``: s = g = 1; ``none``: no shortcut at all; ``rezero``: g learnable, starting
      at 0 (Bachlechner et al., 2020); ``deepnorm``: s = alpha > 1, fixed (Wang et al., 2022).

    The norm is passed in (not owned) so the layer can keep torch's names ``norm1``, ``norm2``.
    """

    def __init__(self, config: TransformerConfig, alpha: float = 1.0):
        super().__init__()
        self.pre_norm = config.norm_first
        self.kind = config.residual
        self.dropout = nn.Dropout(config.dropout)
        self.residual_scale = alpha if self.kind == "deepnorm" else 1.0
        if self.kind == "rezero":
            self.rezero_gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, sublayer, norm: nn.Module) -> torch.Tensor:
        branch = self.dropout(sublayer(norm(x) if self.pre_norm else x))
        if self.kind == "none":
            out = branch
        elif self.kind == "rezero":
            out = x + self.rezero_gain * branch
        else:
            out = self.residual_scale * x + branch
        return out if self.pre_norm else norm(out)

    def extra_repr(self) -> str:
        where = "pre-norm" if self.pre_norm else "post-norm"
        return f"{self.kind}, {where}, residual_scale={self.residual_scale:.4g}"


class FeedForward(nn.Module):
    """Position-wise FFN: ``max(0, x W1 + b1) W2 + b2`` (one hidden layer, applied to each token)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.linear1 = nn.Linear(config.d_model, config.d_ff)
        self.linear2 = nn.Linear(config.d_ff, config.d_model)
        self.activation = F.relu if config.activation == "relu" else F.gelu
        self.dropout = nn.Dropout(config.activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)); shape (max_len, d_model)."""
    if d_model % 2 != 0:
        raise ValueError(f"sinusoidal positions pair sin and cos, so d_model must be even, got {d_model}")
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    inv_freq = torch.pow(10000.0, -torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq)
    return pe.float()


class PositionalEncoding(nn.Module):
    """Adds positions to scaled token embeddings: fixed sinusoids or a learned table."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.max_len = config.max_len
        self.learned = config.positional == "learned"
        if self.learned:
            self.embedding = nn.Embedding(config.max_len, config.d_model)
        else:
            self.register_buffer("pe", sinusoidal_positions(config.max_len, config.d_model), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len={self.max_len}; raise TransformerConfig.max_len")
        table = self.embedding.weight if self.learned else self.pe
        return x + table[:T].to(x.dtype)


# ----------------------------------------------------------------------------- layers


def _attention(config: TransformerConfig, self_attention: bool) -> MultiHeadAttention:
    kw = dict(dropout=config.attention_dropout, backend=config.attention_backend)
    if config.fast:
        return PackedMultiHeadAttention(config.d_model, config.n_heads, self_attention=self_attention, **kw)
    return MultiHeadAttention(config.d_model, config.n_heads, **kw)


class EncoderLayer(nn.Module):
    """Self-attention, then the FFN; each joins the residual stream through a :class:`ResidualBranch`.

    ``src_mask`` (optional, boolean, True = may attend, broadcastable to ``(B, H, S, S)``) replaces
    the padding mask when the caller has built it already (the fast configuration builds it once).
    """

    def __init__(self, config: TransformerConfig, alpha: float = 1.0):
        super().__init__()
        self.config = config
        self.self_attn = _attention(config, self_attention=True)
        self.ff = FeedForward(config)
        self.norm1, self.norm2 = make_norm(config), make_norm(config)
        self.residual1, self.residual2 = ResidualBranch(config, alpha), ResidualBranch(config, alpha)

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None,
                src_mask: torch.Tensor | None = None) -> torch.Tensor:
        def self_attention(h):
            return self.self_attn(h, h, h, attn_mask=src_mask, key_padding_mask=src_key_padding_mask)

        x = self.residual1(x, self_attention, self.norm1)
        return self.residual2(x, self.ff, self.norm2)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the encoder memory, then the FFN.

    ``tgt_mask`` and ``memory_mask`` (optional, boolean, True = may attend) replace the padding
    masks when the caller has built them already; ``tgt_mask`` must then include the causal mask.
    """

    def __init__(self, config: TransformerConfig, alpha: float = 1.0):
        super().__init__()
        self.config = config
        self.self_attn = _attention(config, self_attention=True)
        self.multihead_attn = _attention(config, self_attention=False)
        self.ff = FeedForward(config)
        self.norm1, self.norm2, self.norm3 = make_norm(config), make_norm(config), make_norm(config)
        self.residual1, self.residual2, self.residual3 = (ResidualBranch(config, alpha) for _ in range(3))

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        tgt_key_padding_mask: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        def self_attention(h):
            if tgt_mask is not None:  # already causal
                return self.self_attn(h, h, h, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask)
            return self.self_attn(h, h, h, key_padding_mask=tgt_key_padding_mask, is_causal=True)

        def cross_attention(h):
            return self.multihead_attn(h, memory, memory, attn_mask=memory_mask,
                                       key_padding_mask=memory_key_padding_mask)

        x = self.residual1(x, self_attention, self.norm1)
        x = self.residual2(x, cross_attention, self.norm2)
        return self.residual3(x, self.ff, self.norm3)


class Encoder(nn.Module):
    def __init__(self, config: TransformerConfig, alpha: float = 1.0):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config, alpha) for _ in range(config.n_encoder_layers))
        # Pre-LN leaves the residual stream un-normalized: its output needs one last norm.
        self.norm = make_norm(config) if config.norm_first else None

    def forward(self, x, src_key_padding_mask=None):
        src_mask = None
        if self.layers[0].config.fast and src_key_padding_mask is not None:
            # Built once for the whole stack (the teaching layers rebuild it in every layer).
            src_mask, src_key_padding_mask = ~src_key_padding_mask[:, None, None, :], None
        for layer in self.layers:
            x = layer(x, src_key_padding_mask, src_mask)
        return self.norm(x) if self.norm is not None else x


class Decoder(nn.Module):
    def __init__(self, config: TransformerConfig, alpha: float = 1.0):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config, alpha) for _ in range(config.n_decoder_layers))
        self.norm = make_norm(config) if config.norm_first else None

    def forward(self, x, memory, tgt_key_padding_mask=None, memory_key_padding_mask=None):
        tgt_mask = memory_mask = None
        if self.layers[0].config.fast:
            # Built once for the whole stack. Without padding the causal case stays is_causal=True,
            # which lets SDPA pick its fused causal kernel.
            if tgt_key_padding_mask is not None:
                T = x.shape[1]
                tgt_mask = causal_mask(T, device=x.device) & ~tgt_key_padding_mask[:, None, None, :]
                tgt_key_padding_mask = None
            if memory_key_padding_mask is not None:
                memory_mask, memory_key_padding_mask = ~memory_key_padding_mask[:, None, None, :], None
        for layer in self.layers:
            x = layer(x, memory, tgt_key_padding_mask, memory_key_padding_mask, tgt_mask, memory_mask)
        return self.norm(x) if self.norm is not None else x


# ----------------------------------------------------------------------------- model


class Transformer(nn.Module):
    """Embeddings (scaled by sqrt(d_model)) + positions -> encoder, decoder -> linear to vocabulary logits."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if config.fast:
            # The teaching model draws the initial weights, so that a fast model and a teaching
            # model built from the same seed start from the same weights (a packed (3d, d) matrix
            # would get another Xavier range than three (d, d) ones) and leave the random number
            # generator in the same state. The fast model's own draws are thrown away.
            import dataclasses

            teaching = Transformer(dataclasses.replace(config, fast=False))
            with torch.random.fork_rng(devices=[]):
                self._build(config)
            self.load_state_dict(teaching.state_dict())
        else:
            self._build(config)

    def _build(self, config: TransformerConfig) -> None:
        self.config = config
        c = config
        self.deepnorm = deepnorm_constants(c.n_encoder_layers, c.n_decoder_layers)
        deep = c.residual == "deepnorm"
        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.d_model)
        self.positional = PositionalEncoding(c)
        self.embed_dropout = nn.Dropout(c.dropout)
        self.encoder = Encoder(c, self.deepnorm["encoder_alpha"] if deep else 1.0)
        self.decoder = Decoder(c, self.deepnorm["decoder_alpha"] if deep else 1.0)
        self.generator = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        self._init_weights()
        if c.share_embeddings:
            # One matrix for all three, as in the paper §3.4 (after Press & Wolf, 2017).
            self.tgt_embed.weight = self.src_embed.weight
            self.generator.weight = self.src_embed.weight

    # -- initialization -----------------------------------------------------------
    def _init_weights(self) -> None:
        c = self.config
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        embeddings = [self.src_embed.weight, self.tgt_embed.weight]
        if c.init == "gpt2":
            # GPT-2: N(0, 0.02) everywhere, and the projections that write into the residual
            # stream shrunk by 1/sqrt(number of residual branches), so the stream's variance
            # does not grow with depth (2 branches per encoder layer, 3 per decoder layer).
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, mean=0.0, std=0.02)
            for stack, branches in ((self.encoder, 2 * c.n_encoder_layers), (self.decoder, 3 * c.n_decoder_layers)):
                for name, p in stack.named_parameters():
                    if name.endswith(("out_proj.weight", "linear2.weight")):
                        nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(branches))
            return
        # xavier (as torch.nn.Transformer) and deepnorm: Xavier on every matrix of the stacks.
        for stack, beta in (
            (self.encoder, self.deepnorm["encoder_beta"]),
            (self.decoder, self.deepnorm["decoder_beta"]),
        ):
            for name, p in stack.named_parameters():
                if p.dim() < 2:
                    continue
                if c.init == "deepnorm":
                    # DeepNet: Xavier-normal, gain beta on the FFN, value and output projections, 1 on q and k.
                    scaled = name.endswith(("v_proj.weight", "out_proj.weight", "linear1.weight", "linear2.weight"))
                    nn.init.xavier_normal_(p, gain=beta if scaled else 1.0)
                else:
                    nn.init.xavier_uniform_(p)
        nn.init.xavier_uniform_(self.generator.weight)
        # Embeddings N(0, 1/d_model): multiplied by sqrt(d_model) they become unit-variance,
        # the same scale as the sinusoids they are added to (tensor2tensor's convention).
        for w in embeddings:
            nn.init.normal_(w, mean=0.0, std=c.d_model**-0.5)
        if c.positional == "learned":
            # Learned positions start at the scale of the sinusoids they replace (mean square 1/2).
            nn.init.normal_(self.positional.embedding.weight, mean=0.0, std=0.5**0.5)

    # -- pieces -------------------------------------------------------------------------
    def _check_tokens(self, tokens: torch.Tensor, vocab_size: int, name: str) -> None:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be an integer tensor (B, T), got shape {list(tokens.shape)} dtype {tokens.dtype}")
        # The range check reads values back to the host; on an accelerator that sync would stall the
        # kernel queue every step, so it runs on CPU tensors only (CUDA raises its own device-side assert).
        if tokens.device.type == "cpu" and tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
            raise ValueError(f"{name} has token ids outside [0, {vocab_size}): min {int(tokens.min())}, max {int(tokens.max())}")

    def key_padding_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens == pad_id``: the ``(B, T)`` mask with True = PAD that encode/decode take."""
        return tokens == self.config.pad_id

    def embed_src(self, src: torch.Tensor) -> torch.Tensor:
        self._check_tokens(src, self.config.src_vocab_size, "src")
        return self.embed_dropout(self.positional(self.src_embed(src) * math.sqrt(self.config.d_model)))

    def embed_tgt(self, tgt: torch.Tensor) -> torch.Tensor:
        self._check_tokens(tgt, self.config.tgt_vocab_size, "tgt_in")
        return self.embed_dropout(self.positional(self.tgt_embed(tgt) * math.sqrt(self.config.d_model)))

    def encode(self, src: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source tokens (B, S) -> memory (B, S, d_model)."""
        return self.encoder(self.embed_src(src), src_key_padding_mask)

    def decode(self, tgt_in, memory, src_key_padding_mask=None, tgt_key_padding_mask=None) -> torch.Tensor:
        """Shifted target tokens (B, T) and memory -> logits (B, T, tgt_vocab_size); causal by construction."""
        h = self.decoder(self.embed_tgt(tgt_in), memory, tgt_key_padding_mask, src_key_padding_mask)
        return self.generator(h)

    def forward(self, src, tgt_in, src_key_padding_mask=None, tgt_key_padding_mask=None) -> torch.Tensor:
        memory = self.encode(src, src_key_padding_mask)
        return self.decode(tgt_in, memory, src_key_padding_mask, tgt_key_padding_mask)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of distinct parameters (a tied matrix counts once)."""
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            for w in (self.src_embed.weight, self.tgt_embed.weight, self.generator.weight):
                params.pop(id(w), None)
            if self.config.positional == "learned":
                params.pop(id(self.positional.embedding.weight), None)
        return sum(p.numel() for p in params.values())

    def set_store_attention(self, flag: bool = True) -> None:
        """Keep the last attention weights in every attention module (``.last_attention``)."""
        for m in self.modules():
            if isinstance(m, MultiHeadAttention):
                m.store_attention = flag
                if not flag:
                    m.last_attention = None


# ----------------------------------------------------------------------------- decoding


@torch.no_grad()
def greedy_decode(model: Transformer, src, bos_id: int, eos_id: int, max_len: int, src_key_padding_mask=None):
    """Batched greedy decoding: returns (B, L) token ids starting with ``bos_id``.

    At most ``max_len`` tokens are generated after BOS; a sequence that has produced
    ``eos_id`` is padded with ``pad_id`` afterwards, and the loop stops once every
    sequence has its EOS. The model runs in eval mode and is restored afterwards.
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    was_training = model.training
    model.eval()
    try:
        memory = model.encode(src, src_key_padding_mask)
        B = src.shape[0]
        out = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        pad = model.config.pad_id
        for _ in range(max_len):
            logits = model.decode(out, memory, src_key_padding_mask)
            next_token = logits[:, -1].argmax(dim=-1)
            next_token = torch.where(done, torch.full_like(next_token, pad), next_token)
            out = torch.cat([out, next_token[:, None]], dim=1)
            done |= next_token == eos_id
            if bool(done.all()):
                break
        return out
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- parity with torch


def _check_torch_compatible(config: TransformerConfig) -> None:
    if config.fast:
        raise ValueError("copy weights from the teaching configuration (fast=False); a fast model's state dict "
                         "loads into one: Transformer(dataclasses.replace(config, fast=False)).load_state_dict(...)")
    if config.norm != "layernorm" or config.residual != "standard":
        raise ValueError(
            "only norm='layernorm' with residual='standard' has a torch.nn.Transformer counterpart; "
            f"got norm={config.norm!r}, residual={config.residual!r}"
        )


def _copy_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)


def _copy_linear_or_norm(ours: nn.Module, theirs: nn.Module) -> None:
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)


def _torch_layer_kwargs(config: TransformerConfig, like: torch.Tensor) -> dict:
    return dict(
        d_model=config.d_model,
        nhead=config.n_heads,
        dim_feedforward=config.d_ff,
        dropout=config.dropout,
        activation=config.activation,
        layer_norm_eps=config.layer_norm_eps,
        batch_first=True,
        norm_first=config.norm_first,
        device=like.device,
        dtype=like.dtype,
    )


def to_torch_encoder_layer(layer: EncoderLayer) -> nn.TransformerEncoderLayer:
    """A ``torch.nn.TransformerEncoderLayer`` (batch_first) holding copies of ``layer``'s weights."""
    c = layer.config
    _check_torch_compatible(c)
    theirs = nn.TransformerEncoderLayer(**_torch_layer_kwargs(c, layer.ff.linear1.weight))
    _copy_attention(layer.self_attn, theirs.self_attn)
    for name in ("linear1", "linear2"):
        _copy_linear_or_norm(getattr(layer.ff, name), getattr(theirs, name))
    for name in ("norm1", "norm2"):
        _copy_linear_or_norm(getattr(layer, name), getattr(theirs, name))
    theirs.train(layer.training)
    return theirs


def to_torch_decoder_layer(layer: DecoderLayer) -> nn.TransformerDecoderLayer:
    """A ``torch.nn.TransformerDecoderLayer`` (batch_first) holding copies of ``layer``'s weights."""
    c = layer.config
    _check_torch_compatible(c)
    theirs = nn.TransformerDecoderLayer(**_torch_layer_kwargs(c, layer.ff.linear1.weight))
    _copy_attention(layer.self_attn, theirs.self_attn)
    _copy_attention(layer.multihead_attn, theirs.multihead_attn)
    for name in ("linear1", "linear2"):
        _copy_linear_or_norm(getattr(layer.ff, name), getattr(theirs, name))
    for name in ("norm1", "norm2", "norm3"):
        _copy_linear_or_norm(getattr(layer, name), getattr(theirs, name))
    theirs.train(layer.training)
    return theirs


def to_torch_transformer(model: Transformer) -> nn.Transformer:
    """A ``torch.nn.Transformer`` (batch_first) with the encoder/decoder stacks of ``model`` copied in.

    The embeddings, positions and output projection stay ours (torch.nn.Transformer has
    none); use :func:`torch_core_forward` to run the whole model through the torch core.
    torch.nn.Transformer always ends each stack with a LayerNorm, also in Post-LN, where
    the 2017 paper has none; for ``norm_first=False`` we remove those two norms.
    """
    c = model.config
    _check_torch_compatible(c)
    like = model.generator.weight
    kw = _torch_layer_kwargs(c, like)
    kw.pop("d_model"), kw.pop("nhead")
    with warnings.catch_warnings():
        # torch warns that its nested-tensor fast path is off for norm_first=True; that is expected.
        warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
        theirs = nn.Transformer(
            d_model=c.d_model,
            nhead=c.n_heads,
            num_encoder_layers=c.n_encoder_layers,
            num_decoder_layers=c.n_decoder_layers,
            **kw,
        )
    for ours_layer, their_layer in zip(model.encoder.layers, theirs.encoder.layers):
        their_layer.load_state_dict(to_torch_encoder_layer(ours_layer).state_dict())
    for ours_layer, their_layer in zip(model.decoder.layers, theirs.decoder.layers):
        their_layer.load_state_dict(to_torch_decoder_layer(ours_layer).state_dict())
    if c.norm_first:
        _copy_linear_or_norm(model.encoder.norm, theirs.encoder.norm)
        _copy_linear_or_norm(model.decoder.norm, theirs.decoder.norm)
    else:
        theirs.encoder.norm = None
        theirs.decoder.norm = None
    theirs.train(model.training)
    return theirs


def torch_core_forward(model: Transformer, core: nn.Transformer, src, tgt_in, src_key_padding_mask=None, tgt_key_padding_mask=None):
    """Logits of ``model`` with its encoder/decoder stacks replaced by the torch module ``core``."""
    T = tgt_in.shape[1]
    # torch.nn.Transformer's boolean masks mean True = NOT allowed: the complement of ours.
    tgt_mask = ~causal_mask(T, device=tgt_in.device)
    h = core(
        model.embed_src(src),
        model.embed_tgt(tgt_in),
        tgt_mask=tgt_mask,
        src_key_padding_mask=src_key_padding_mask,
        tgt_key_padding_mask=tgt_key_padding_mask,
        memory_key_padding_mask=src_key_padding_mask,
        tgt_is_causal=True,
    )
    return model.generator(h)
