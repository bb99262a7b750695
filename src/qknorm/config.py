"""Model configuration: one keyword-only dataclass, enums for every choice, validation that names the field.

A `ModelConfig` describes any model this library builds: the QK-norm scope (`none | head | full`), the block
placement (`pre | reordered | sandwich | post`) and the numerics of each family (norm offset, cast order, query
scale, sliding windows, RoPE). Presets (presets.py) are data: a family's base fields plus a size table, built
from scratch with the user's overrides; variants are `config.replace(...)` or `get_config(preset, **overrides)`.

Derived fields. A field nobody set (left None, neither by the user nor by a preset's size table) is derived from
the final values of the fields it depends on:
  n_kv_heads             = n_heads                         resolved at construction
  head_dim               = d_model // n_heads              resolved at construction
  query_pre_attn_scalar  = head_dim                        kept None, read through `query_scale`
  rope_local_theta       = sliding layers use the full-attention layers' RoPE (rope_theta and rope_scaling)
                                                           kept None, read through `local_rope`
  layer_types            = from sliding_window and global_every   kept None, read through `resolved_layer_types()`
`replace(...)` rebuilds the config from its explicit fields plus the changes, so a derived value follows the
new d_model / n_heads, while a value someone gave stays. `dataclasses.replace` cannot know which values were
derived (it copies the resolved ones, e.g. a head_dim of 16 into a config with a new width), so it is refused
with a ConfigError pointing to `config.replace`. Saved configs (`to_dict`) hold resolved values; loaded back, they
are explicit.

Numerics are explicit fields, never derived from a family name.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any, Dict, FrozenSet, Optional, Tuple

from .choice import Choice as _Choice
from .errors import ConfigError
from .plain import plain
from .config_variants import (QKNormGain, QKNormLayers, QKNormScope, QKNormType, fused_layer, layer_has_qk_norm,
                              layer_has_rope, nope_layer_tuple, rotary_dim, validate_variants)
from .config_moe import MoERouter, layer_tuple, mlp_params, validate_moe
from .rope_scaling import RopeScaling

__all__ = ["ModelConfig", "QKNormScope", "QKNormType", "QKNormGain", "QKNormLayers", "Placement", "NormType",
           "NormCast", "Activation", "AttnImpl", "SLIDING", "FULL", "CHUNKED", "field_names", "check_field_names",
           "layer_has_rope", "layer_has_qk_norm", "fused_layer", "rotary_dim"]

class Placement(_Choice):
    """Where the block's norms sit relative to the residual stream."""

    PRE = "pre"  # h = x + f(norm(x))                       (Llama, Qwen3)
    REORDERED = "reordered"  # h = x + norm(f(x))           (OLMo 2)
    SANDWICH = "sandwich"  # h = x + norm2(f(norm1(x)))     (Gemma 3)
    POST = "post"  # h = norm(x + f(x))                     (classic post-LN, BERT/GPT-1)
    PARALLEL = "parallel"  # h = x + attn(norm(x)) + mlp(norm(x))  (Cohere, StableLM parallel residual, GPT-J)


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
CHUNKED = "chunked_attention"  # Llama 4: key kept iff k <= q in the same chunk of attention_chunk positions
_LAYER_TYPES = (SLIDING, FULL, CHUNKED)

_ENUM_FIELDS = {
    "qk_norm": QKNormScope,
    "qk_norm_type": QKNormType,
    "placement": Placement,
    "norm_type": NormType,
    "norm_cast": NormCast,
    "activation": Activation,
    "attn_impl": AttnImpl,
    "qk_norm_gain": QKNormGain,
    "qk_norm_layers": QKNormLayers,
    "moe_router": MoERouter,
}


_DERIVABLE = ("n_kv_heads", "head_dim")  # resolved at construction when None (see the module docstring)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything needed to build a `TransformerLM`. All fields are keyword-only; see each comment.

    Derived fields (None = derived from the final values of the fields named; see the module docstring):
    n_kv_heads <- n_heads; head_dim <- d_model, n_heads; query_pre_attn_scalar <- head_dim; rope_local_theta <-
    rope_theta, rope_scaling; layer_types <- sliding_window, global_every, n_layers. Build variants with
    `replace(...)`; `dataclasses.replace` is refused.
    """

    # --- shape
    vocab_size: int = 256  # tokens; 256 = byte-level
    d_model: int = 128  # residual width (HF hidden_size)
    n_layers: int = 2
    n_heads: int = 4  # query heads
    n_kv_heads: Optional[int] = None  # key/value heads (GQA/MQA); None = n_heads (derived)
    head_dim: Optional[int] = None  # None = d_model // n_heads (derived); may differ from that (Qwen3, Gemma 3)
    d_ff: int = 512  # gated-MLP hidden width (HF intermediate_size)
    max_seq_len: int = 2048  # RoPE tables are built lazily; this bounds nothing but documents intent

    # --- QK-norm and block placement
    qk_norm: QKNormScope = QKNormScope.NONE
    # what the QK-norm computes (needs qk_norm head or full): rms | layernorm | l2 (nn/qk_norm.py)
    qk_norm_type: QKNormType = QKNormType.RMS
    placement: Placement = Placement.PRE
    # --- the families' QK-norm and RoPE variants (config_variants.py has each choice)
    qk_norm_gain: QKNormGain = QKNormGain.SHARED  # shared | per_head (Cohere, StableLM) | none (Llama 4)
    qk_norm_after_rope: bool = False  # normalize the rotated q/k (HunYuan, Llama 4); false = before RoPE
    qk_norm_layers: QKNormLayers = QKNormLayers.ALL  # all | rope (only the layers that apply RoPE: Llama 4)
    nope_layers: Tuple[int, ...] = ()  # layers without RoPE (Llama 4 no_rope_layers, EXAONE 4 global layers)
    rope_interleaved: bool = False  # rotate adjacent pairs (Cohere, Llama 4) instead of halves (rotate-half)
    rope_fraction: float = 1.0  # RoPE on the first int(head_dim * f) dims of a head (StableLM: 0.25)
    # Llama 4 temperature tuning on NoPE layers: q at position p times log1p(floor((p+1)/floor)) * scale + 1
    nope_attn_scale: Optional[float] = None
    nope_floor_scale: float = 8192.0

    # --- norm numerics
    norm_type: NormType = NormType.RMSNORM
    norm_eps: float = 1e-6
    norm_offset: float = 0.0  # Gemma stores RMSNorm weights as offsets: scale = norm_offset + w (1.0), zero init
    norm_cast: NormCast = NormCast.INPUT
    layernorm_bias: bool = True  # block LayerNorms (norm_type layernorm) carry a bias; Cohere's do not
    layernorm_weight: bool = True  # ... and a gain; OLMo 1's carry neither (non-parametric, fp32, cast once)

    # --- attention
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2 style)
    o_proj_bias: bool = False  # bias on the output projection too (HF Llama/Qwen3/OLMo 2/Gemma 3 attention_bias)
    query_pre_attn_scalar: Optional[float] = None  # scores scaled by this**-0.5; None = head_dim (Gemma 3: 256/168)
    attn_softcap: Optional[float] = None  # tanh(s/c)*c on scores before the mask (Gemma 2 style)
    # c: q, k and v clamped to [-c, c] after their projections (and after a QK-norm before RoPE), OLMo 1 / OLMoE
    clip_qkv: Optional[float] = None
    sliding_window: Optional[int] = None  # W: key kept if q-W < k <= q on sliding layers
    attention_chunk: Optional[int] = None  # C: on chunked_attention layers key kept if k <= q, q // C == k // C
    # with sliding_window: layer i is full attention iff (i+1) % global_every == 0 (Gemma 3: 6); 0 = no
    # full-attention layer, the window applies to every layer (Mistral)
    global_every: int = 1
    layer_types: Optional[Tuple[str, ...]] = None  # explicit per-layer "sliding_attention"/"full_attention"
    attn_impl: AttnImpl = AttnImpl.SDPA
    qk_backend: Optional[str] = None  # ops.qk_norm_rope backend: None = best, "torch", "triton"

    # --- RoPE (variants: rope_scaling.py; their tables: nn/rope.py)
    rope_theta: float = 10000.0  # theta of full-attention layers
    # sliding layers' RoPE: None = the full-attention layers' RoPE, rope_scaling included (Mistral, Qwen); a
    # number = plain, unscaled RoPE with this theta (Gemma 3: 1e4)
    rope_local_theta: Optional[float] = None
    # None = plain RoPE; a RopeScaling (linear | llama3 | yarn), given as one, as its dict, or as a number (a
    # linear factor, the form saved before RoPE variants existed; 1 = None)
    rope_scaling: Optional[RopeScaling] = None

    # --- MLP, embeddings, head
    activation: Activation = Activation.SILU
    embed_scale: bool = False  # multiply embeddings by sqrt(d_model) cast to the weight dtype (Gemma)
    tie_embeddings: bool = False
    final_softcap: Optional[float] = None  # tanh(logits/c)*c on the output logits
    logit_scale: float = 1.0  # output logits multiplied by this (Cohere: 0.0625), before any final softcap
    init_std: float = 0.02
    # sigmaReparam (Zhai et al. 2023) on the attention and MLP linears: W_hat = gamma / sigma(W) * W, sigma by
    # one power iteration per training forward (nn/sigma_reparam.py)
    sigma_reparam: bool = False

    # --- mixture-of-experts MLPs (config_moe.py has each field's range; nn/moe.py the module); 0 experts = dense
    n_experts: int = 0  # experts of a sparse layer (HF num_experts)
    experts_per_token: int = 1  # top-k (HF num_experts_per_tok)
    moe_d_ff: Optional[int] = None  # one expert's hidden width; None = d_ff (HF moe_intermediate_size)
    norm_topk_prob: bool = False  # renormalize the top-k softmax weights to sum to 1
    moe_every: int = 1  # layer i sparse iff (i+1) % moe_every == 0 (Qwen3-MoE decoder_sparse_step)
    dense_layers: Tuple[int, ...] = ()  # layers kept dense (Qwen3-MoE mlp_only_layers)
    moe_router: MoERouter = MoERouter.SOFTMAX  # softmax (OLMoE, Qwen3-MoE) | sigmoid on the inputs (Llama 4)
    moe_shared_expert: bool = False  # one always-on expert beside the routed ones (Llama 4)

    # bookkeeping, not a setting: which of _DERIVABLE this config derived (set in __post_init__; its presence
    # on input is how a dataclasses.replace copy is recognised)
    _derived: Optional[FrozenSet[str]] = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._derived is not None:
            raise ConfigError("a ModelConfig cannot be copied with dataclasses.replace (it would keep values derived "
                              "from the old shape, e.g. head_dim); use config.replace(...), which re-derives them")
        for name, enum_cls in _ENUM_FIELDS.items():
            object.__setattr__(self, name, enum_cls.parse(name, getattr(self, name)))
        object.__setattr__(self, "rope_scaling", RopeScaling.from_value(self.rope_scaling))
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "nope_layers", nope_layer_tuple(self.nope_layers))
        object.__setattr__(self, "dense_layers", layer_tuple(self.dense_layers))
        object.__setattr__(self, "_derived", self._derive())
        self._validate()

    def _derive(self) -> FrozenSet[str]:
        """Resolve n_kv_heads and head_dim when not given; the names of those derived."""
        derived = set()
        for name in ("d_model", "n_heads"):
            _require_int(name, getattr(self, name), minimum=1)
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
            derived.add("n_kv_heads")
        _require_int("n_kv_heads", self.n_kv_heads, minimum=1)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (GQA groups query heads evenly)"
            )
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
            derived.add("head_dim")
        return frozenset(derived)

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        for name in ("vocab_size", "n_layers", "head_dim", "d_ff", "max_seq_len"):
            _require_int(name, getattr(self, name), minimum=1)
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even (RoPE rotates pairs of dimensions)")
        for name in ("norm_eps", "rope_theta", "init_std"):
            _require_positive(name, getattr(self, name))
        for name in ("rope_local_theta", "query_pre_attn_scalar", "attn_softcap", "final_softcap", "clip_qkv"):
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
        _require_int("global_every", self.global_every, minimum=0)
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
            if CHUNKED in self.layer_types and self.attention_chunk is None:
                raise ConfigError("layer_types has chunked_attention layers but attention_chunk is not set")
        if self.qk_backend not in (None, "torch", "triton"):
            raise ConfigError(f"qk_backend={self.qk_backend!r} is not allowed; choose one of: None, torch, triton")
        if self.qk_norm_type is not QKNormType.RMS:
            if self.qk_norm is QKNormScope.NONE:
                raise ConfigError(f"qk_norm_type={self.qk_norm_type.value!r} needs qk_norm='head' or 'full' (the "
                                  "span it normalizes over); qk_norm is 'none'")
            if self.qk_backend == "triton":
                raise ConfigError(f"qk_backend='triton' is the fused RMSNorm kernel; qk_norm_type="
                                  f"{self.qk_norm_type.value!r} runs in PyTorch: use qk_backend None or 'torch'")
        if not isinstance(self.sigma_reparam, bool):
            raise ConfigError(f"sigma_reparam={self.sigma_reparam!r} must be true or false")
        validate_variants(self)
        validate_moe(self)

    # ------------------------------------------------------------------ derived
    def resolved_layer_types(self) -> Tuple[str, ...]:
        """Per-layer attention type (full, sliding or chunked); without explicit layer_types, Gemma 3's rule: sliding unless (i+1) % global_every == 0 (0: all sliding)."""
        if self.layer_types is not None:
            return self.layer_types
        if self.sliding_window is None:
            return (FULL,) * self.n_layers
        g = self.global_every
        return tuple(FULL if g and (i + 1) % g == 0 else SLIDING for i in range(self.n_layers))

    @property
    def local_rope(self) -> Tuple[float, Optional[RopeScaling]]:
        """(theta, scaling) of the sliding layers' RoPE (see rope_local_theta)."""
        if self.rope_local_theta is None:
            return self.rope_theta, self.rope_scaling
        return self.rope_local_theta, None

    @property
    def query_scale(self) -> float:
        """Multiplier on q.k scores: query_pre_attn_scalar**-0.5 (default head_dim**-0.5)."""
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def num_params(self, *, exclude_embeddings: bool = False) -> int:
        """Parameter count computed from the shape (matches `sum(p.numel())` of the built model)."""
        d, h, hkv, hd = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim
        attn = d * hd * (2 * h + 2 * hkv) + (hd * (h + 2 * hkv) if self.attention_bias else 0)
        attn += d if self.o_proj_bias else 0
        if self.qk_norm_type is QKNormType.L2:
            qk = h  # one temperature per query head, no gains
        elif self.qk_norm_gain is QKNormGain.NONE:
            qk = 0
        elif self.qk_norm is QKNormScope.HEAD and self.qk_norm_gain is QKNormGain.SHARED:
            qk = 2 * hd
        else:  # scope full, or per-head gains
            qk = hd * (h + hkv)
        mlp_total = sum(mlp_params(self, i) for i in range(self.n_layers))  # dense: 3 d d_ff a layer
        if self.sigma_reparam:  # one gamma per reparametrized linear (q, k, v, o, gate, up, down)
            attn, mlp_total = attn + 4, mlp_total + 3 * self.n_layers
        norm_size = d * (2 if self.norm_type is NormType.LAYERNORM and self.layernorm_bias else 1)
        if self.norm_type is NormType.LAYERNORM and not self.layernorm_weight:
            norm_size = 0  # OLMo 1's non-parametric LayerNorm
        n_block_norms = {Placement.SANDWICH: 4, Placement.PARALLEL: 1}.get(self.placement, 2)
        per_layer = attn + n_block_norms * norm_size
        qk_total = qk * sum(layer_has_qk_norm(self, i) for i in range(self.n_layers))
        final_norm = 0 if self.placement is Placement.POST else norm_size
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.n_layers * per_layer + mlp_total + qk_total + final_norm + (0 if exclude_embeddings else emb)

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

    # ------------------------------------------------------------------ (de)serialization and variants
    def to_dict(self) -> Dict[str, Any]:
        """Every setting with its resolved value, JSON-ready (enums as strings, RopeScaling as its dict)."""
        return {name: plain(getattr(self, name)) for name in field_names()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any], *, source: str = "config") -> "ModelConfig":
        """Inverse of `to_dict`; also reads configs saved before RoPE variants (rope_scaling a number)."""
        check_field_names(data, source=source)
        config = cls(**data)
        legacy = isinstance(data.get("rope_scaling"), (int, float)) and not isinstance(data["rope_scaling"], bool)
        if legacy and config.rope_scaling is not None and config.rope_local_theta is None and \
                SLIDING in config.resolved_layer_types():
            # then, sliding layers got plain RoPE with rope_theta however the full-attention layers were scaled
            config = config.replace(rope_local_theta=config.rope_theta)
        return config

    def to_json(self) -> str:
        return json.dumps({"qknorm_config": self.to_dict()}, indent=2)

    def replace(self, **changes: Any) -> "ModelConfig":
        """This config's explicit fields with `changes`, built from scratch: fields it derived are derived again
        from the new values (a ConfigError names an unknown field)."""
        check_field_names(changes)
        given = {name: getattr(self, name) for name in field_names() if name not in self._derived}
        return ModelConfig(**{**given, **changes})


def field_names() -> Tuple[str, ...]:
    """The settable fields of ModelConfig, in declaration order."""
    return _FIELD_NAMES


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(ModelConfig) if not f.name.startswith("_"))
# typing.get_type_hints(ModelConfig) lists the settable fields (the CLI's --set reads it): not the bookkeeping
del ModelConfig.__annotations__["_derived"]


def check_field_names(names, *, source: Optional[str] = None) -> None:
    """ConfigError naming the first of `names` that is not a ModelConfig field (and `source`, e.g. a file)."""
    unknown = sorted(set(names) - set(_FIELD_NAMES))
    if unknown:
        what = f"{source}: unknown field" if source else "unknown config field"
        raise ConfigError(f"{what} {unknown[0]!r}; known fields: {', '.join(sorted(_FIELD_NAMES))}")


def _require_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")


def _require_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
        raise ConfigError(f"{name}={value!r} must be a positive number")
