"""Model configuration: one keyword-only dataclass, enums for every choice, validation that names the field.

A `ModelConfig` describes any model this library builds: the QK-norm scope (`none | head | full`), the block
placement (`pre | reordered | sandwich | post`) and the numerics of each family (norm offset, cast order, query
scale, sliding windows, RoPE thetas). Presets (presets.py) are just functions returning a `ModelConfig`;
variants are `dataclasses.replace(config, ...)` or `get_config(preset, **overrides)`.

Numerics are explicit fields, never derived from a family name (STYLE.md rule 3).
"""
from __future__ import annotations

import dataclasses
import enum
import json
import warnings
from typing import Any, Optional, Tuple

from .errors import ConfigError


class _Choice(str, enum.Enum):
    """A str enum whose constructor error names the allowed values."""

    @classmethod
    def parse(cls, field: str, value: Any) -> "_Choice":
        if isinstance(value, cls):
            return value
        if isinstance(value, enum.Enum):  # another str enum with the same values
            value = value.value
        try:
            return cls(str(value).lower())
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise ConfigError(f"{field}={value!r} is not allowed; choose one of: {allowed}") from None


class QKNormScope(_Choice):
    """Where the QK RMSNorm statistic is taken."""

    NONE = "none"  # no QK-norm (Llama)
    HEAD = "head"  # per head over head_dim (Qwen3, Gemma 3)
    FULL = "full"  # over the whole projection width n_heads*head_dim / n_kv_heads*head_dim (OLMo 2)


class Placement(_Choice):
    """Where the block's norms sit relative to the residual stream."""

    PRE = "pre"  # h = x + f(norm(x))                       (Llama, Qwen3)
    REORDERED = "reordered"  # h = x + norm(f(x))           (OLMo 2)
    SANDWICH = "sandwich"  # h = x + norm2(f(norm1(x)))     (Gemma 3)
    POST = "post"  # h = norm(x + f(x))                     (classic post-LN, BERT/GPT-1)


class NormType(_Choice):
    RMSNORM = "rmsnorm"
    LAYERNORM = "layernorm"


class NormCast(_Choice):
    """Order of the weight multiply and the cast back to the input dtype in RMSNorm."""

    FP32 = "fp32"  # (w * x_hat).to(dtype) with w in fp32       (OLMo 2, Gemma 3)
    INPUT = "input"  # w * x_hat.to(dtype)                      (Llama, Qwen3)


class Activation(_Choice):
    SILU = "silu"  # SwiGLU
    GELU_TANH = "gelu_tanh"  # GeGLU with tanh-approximate GELU (Gemma)


class AttnImpl(_Choice):
    SDPA = "sdpa"  # torch scaled_dot_product_attention (flash/mem-efficient kernels)
    EAGER = "eager"  # explicit softmax(QK^T); needed for softcapping; can report the max logit


SLIDING = "sliding_attention"
FULL = "full_attention"
_LAYER_TYPES = (SLIDING, FULL)

_ENUM_FIELDS = {
    "qk_norm": QKNormScope,
    "placement": Placement,
    "norm_type": NormType,
    "norm_cast": NormCast,
    "activation": Activation,
    "attn_impl": AttnImpl,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything needed to build a `TransformerLM`. All fields are keyword-only; see each comment."""

    # --- shape
    vocab_size: int = 256  # tokens; 256 = byte-level
    d_model: int = 128  # residual width (HF hidden_size)
    n_layers: int = 2
    n_heads: int = 4  # query heads
    n_kv_heads: Optional[int] = None  # key/value heads (GQA/MQA); None = n_heads
    head_dim: Optional[int] = None  # None = d_model // n_heads; may differ from that (Qwen3, Gemma 3)
    d_ff: int = 512  # gated-MLP hidden width (HF intermediate_size)
    max_seq_len: int = 2048  # RoPE tables are built lazily; this bounds nothing but documents intent

    # --- QK-norm and block placement
    qk_norm: QKNormScope = QKNormScope.NONE
    placement: Placement = Placement.PRE

    # --- norm numerics
    norm_type: NormType = NormType.RMSNORM
    norm_eps: float = 1e-6
    norm_offset: float = 0.0  # Gemma stores RMSNorm weights as offsets: scale = norm_offset + w (1.0), zero init
    norm_cast: NormCast = NormCast.INPUT

    # --- attention
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2 style)
    o_proj_bias: bool = False  # bias on the output projection too (HF Llama/Qwen3/OLMo 2/Gemma 3 attention_bias)
    query_pre_attn_scalar: Optional[float] = None  # scores scaled by this**-0.5; None = head_dim (Gemma 3: 256/168)
    attn_softcap: Optional[float] = None  # tanh(s/c)*c on scores before the mask (Gemma 2 style)
    sliding_window: Optional[int] = None  # W: key kept if q-W < k <= q on sliding layers
    global_every: int = 1  # with sliding_window: layer i is full attention iff (i+1) % global_every == 0
    layer_types: Optional[Tuple[str, ...]] = None  # explicit per-layer "sliding_attention"/"full_attention"
    attn_impl: AttnImpl = AttnImpl.SDPA
    qk_backend: Optional[str] = None  # ops.qk_norm_rope backend: None = best, "torch", "triton"

    # --- RoPE
    rope_theta: float = 10000.0  # theta of full-attention layers
    rope_local_theta: Optional[float] = None  # theta of sliding layers (Gemma 3: 1e4); None = rope_theta
    rope_scaling: float = 1.0  # linear position scaling factor on full-attention layers (Gemma 3 4B+: 8)

    # --- MLP, embeddings, head
    activation: Activation = Activation.SILU
    embed_scale: bool = False  # multiply embeddings by sqrt(d_model) cast to the weight dtype (Gemma)
    tie_embeddings: bool = False
    final_softcap: Optional[float] = None  # tanh(logits/c)*c on the output logits
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name, enum_cls in _ENUM_FIELDS.items():
            object.__setattr__(self, name, enum_cls.parse(name, getattr(self, name)))
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.head_dim is None:
            if self.n_heads > 0 and self.d_model % self.n_heads:
                raise ConfigError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.d_model // max(self.n_heads, 1))
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len"):
            _require_int(name, getattr(self, name), minimum=1)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (GQA groups query heads evenly)"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even (RoPE rotates pairs of dimensions)")
        for name in ("norm_eps", "rope_theta", "rope_scaling", "init_std"):
            _require_positive(name, getattr(self, name))
        for name in ("rope_local_theta", "query_pre_attn_scalar", "attn_softcap", "final_softcap"):
            if getattr(self, name) is not None:
                _require_positive(name, getattr(self, name))
        if self.norm_eps >= 1.0:
            raise ConfigError(f"norm_eps={self.norm_eps} is not a small positive number (expected < 1, e.g. 1e-6)")
        if self.norm_offset not in (0.0, 1.0):
            raise ConfigError(f"norm_offset={self.norm_offset!r} must be 0.0 (scale = w) or 1.0 (Gemma: 1 + w)")
        if self.norm_type is NormType.LAYERNORM and self.norm_offset:
            raise ConfigError("norm_offset=1.0 applies to norm_type='rmsnorm' only, not layernorm")
        if self.sliding_window is not None:
            _require_int("sliding_window", self.sliding_window, minimum=1)
        _require_int("global_every", self.global_every, minimum=1)
        if self.layer_types is not None:
            if len(self.layer_types) != self.n_layers:
                raise ConfigError(
                    f"layer_types has {len(self.layer_types)} entries but n_layers={self.n_layers}; give one per layer"
                )
            bad = [t for t in self.layer_types if t not in _LAYER_TYPES]
            if bad:
                raise ConfigError(f"layer_types entry {bad[0]!r} is not allowed; choose from {', '.join(_LAYER_TYPES)}")
            if SLIDING in self.layer_types and self.sliding_window is None:
                raise ConfigError("layer_types has sliding_attention layers but sliding_window is not set")
        if self.qk_backend not in (None, "torch", "triton"):
            raise ConfigError(f"qk_backend={self.qk_backend!r} is not allowed; choose one of: None, torch, triton")

    # ------------------------------------------------------------------ derived
    def resolved_layer_types(self) -> Tuple[str, ...]:
        """Per-layer attention type; Gemma 3 rule: sliding unless (i+1) % global_every == 0."""
        if self.layer_types is not None:
            return self.layer_types
        if self.sliding_window is None:
            return (FULL,) * self.n_layers
        return tuple(FULL if (i + 1) % self.global_every == 0 else SLIDING for i in range(self.n_layers))

    @property
    def query_scale(self) -> float:
        """Multiplier on q.k scores: query_pre_attn_scalar**-0.5 (default head_dim**-0.5)."""
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def num_params(self, *, exclude_embeddings: bool = False) -> int:
        """Parameter count computed from the shape (matches `sum(p.numel())` of the built model)."""
        d, h, hkv, hd = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim
        attn = d * hd * (2 * h + 2 * hkv) + (hd * (h + 2 * hkv) if self.attention_bias else 0)
        attn += d if self.o_proj_bias else 0
        if self.qk_norm is QKNormScope.HEAD:
            attn += 2 * hd
        elif self.qk_norm is QKNormScope.FULL:
            attn += hd * (h + hkv)
        mlp = 3 * d * self.d_ff
        norm_size = d * (2 if self.norm_type is NormType.LAYERNORM else 1)
        n_block_norms = 4 if self.placement is Placement.SANDWICH else 2
        per_layer = attn + mlp + n_block_norms * norm_size
        final_norm = 0 if self.placement is Placement.POST else norm_size
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.n_layers * per_layer + final_norm + (0 if exclude_embeddings else emb)

    def warn_if_unsafe_dtype(self, dtype) -> None:
        """fp16 with sandwich/post placements overflows (Gemma 3 activations exceed 65504; transformers #36822)."""
        import torch

        if dtype == torch.float16 and self.placement in (Placement.SANDWICH, Placement.POST):
            warnings.warn(
                f"placement={self.placement.value} in float16 is known to overflow (Gemma 3 activations exceed the "
                "fp16 range); use bfloat16 or float32",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.value if isinstance(v, enum.Enum) else (list(v) if isinstance(v, tuple) else v)
        return out

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field {unknown[0]!r}; known fields: {', '.join(sorted(known))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps({"qknorm_config": self.to_dict()}, indent=2)

    def replace(self, **overrides: Any) -> "ModelConfig":
        """`dataclasses.replace` with an error naming an unknown field."""
        known = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            if key not in known:
                raise ConfigError(f"unknown config field {key!r}; known fields: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **overrides)


def field_names() -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(ModelConfig))


def _require_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")


def _require_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
        raise ConfigError(f"{name}={value!r} must be a positive number")
