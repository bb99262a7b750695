"""OLMo-core's `TransformerConfig` (the JSON its trainer writes under "model" in config.json) -> our `ModelConfig`.

OLMo-core (github.com/allenai/OLMo-core, `olmo_core/nn/transformer/config.py`) serializes a model config with
`as_config_dict()`: nested dicts, options left at None omitted, a "_CLASS_" name on each. Read here from JSON
alone (OLMo-core is never imported), with OLMo-core 3.0's class defaults for omitted options. Three block
types are the numerics of our presets:

  reordered_norm  h = x + norm(f(x))            -> placement "reordered"  (OLMo 2)
  default         h = x + f(norm(x))            -> placement "pre"        (Llama, Qwen3)
  peri_norm       h = x + norm2(f(norm1(x)))    -> placement "sandwich"   (Gemma 3)

  layer norm "rms"       (w.float() * x_hat).to(dtype)  -> norm_cast "fp32"; in a peri_norm block also
                         norm_offset 1.0: Gemma 3's offset storage, so the gains are stored as w - 1
                         (olmo_core.py), as OLMo-core's own Gemma 3 export does, and to_hf writes Gemma 3
  layer norm "qwen_rms"  w * x_hat.to(dtype)             -> norm_cast "input"
  QK-norm                use_head_qk_norm -> "head" (one gain vector of head_dim); else "full" (OLMo 2)
  sliding windows        a window W keeps keys q - W < k <= q (OLMo-core passes (W - 1, 0) to its kernels);
                         full-attention and sliding layers may each have their own RoPE theta (Gemma 3)
  RoPE scaling           none, or position interpolation (PIRoPEScalingConfig = linear) on the full-attention
                         layers (sliding layers then unscaled) or on every layer
  embed_scale            None, or sqrt(d_model) (Gemma 3); the product is the same in fp32 as ours

`full_precision` of norms and RoPE (qwen3's builder sets rope_full_precision=False) changes rounding only
below fp32; a converted model follows our numerics there, as after any HF conversion. Dropout (training only)
is dropped with a warning. Everything else that would change the function (MoE or nGPT blocks, LayerNorm or
other norms, biased norms or MLPs, fused QKV, gated attention, qkv clipping, attention sinks, scalable softmax,
per-head QK gains, NoPE layers, YaRN/Llama-3/ABF RoPE scaling, partial rotary, an embedding norm, a head bias or
no final norm, residual scaling, layers that differ in anything but window and RoPE theta) raises a
CheckpointError naming the field, its value and what is supported.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from itertools import cycle, islice
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..config import FULL, SLIDING, ModelConfig
from ..errors import CheckpointError, ConfigError
from .hf_config import canonical_layers

_PLACEMENTS = {"reordered_norm": "reordered", "default": "pre", "peri_norm": "sandwich"}
_NORM_CASTS = {"rms": "fp32", "qwen_rms": "input"}
_ACTIVATIONS = {"silu": "silu", "gelu_tanh": "gelu_tanh"}
_LN_EPS_DEFAULT = 1e-5  # olmo_core.nn.layer_norm.LayerNorm(eps=1e-5)
_ROPE_THETA_DEFAULT = 500_000  # olmo_core.nn.rope.RoPEConfig.theta


@dataclasses.dataclass(frozen=True)
class _Layer:
    """What one OLMo-core block computes, in our terms. Layers may differ only in `window` and `rope`."""

    placement: str
    norm: Tuple[str, float]  # (norm_cast, eps) of the block norms
    qk_norm: str  # none | head | full
    heads: Tuple[int, int, int]  # n_heads, n_kv_heads, head_dim
    bias: bool
    d_ff: int
    activation: str
    window: Optional[int] = dataclasses.field(default=None, compare=False)
    rope: Tuple[float, float] = dataclasses.field(default=(0.0, 1.0), compare=False)  # theta, linear factor


class _Reader:
    """Values of one JSON object, `None` and missing alike meaning OLMo-core's default; errors name the path."""

    def __init__(self, d: Any, path: str, source: str):
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: {path or 'model config'} is not a JSON object")
        self.d, self.path, self.source = d, path, source

    def field(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, default: Any = None) -> Any:
        value = self.d.get(name)
        return default if value is None else value

    def sub(self, name: str) -> Optional["_Reader"]:
        value = self.d.get(name)
        return None if value is None else _Reader(value, self.field(name), self.source)

    def required(self, name: str, why: str) -> "_Reader":
        sub = self.sub(name)
        if sub is None:
            raise self.bad(name, None, why)
        return sub

    def bad(self, name: str, value: Any, why: str) -> CheckpointError:
        shown = value.value if hasattr(value, "value") else value
        return CheckpointError(f"{self.source}: {self.field(name)}={shown!r} is not supported ({why})")

    def need(self, name: str, ok: bool, why: str, default: Any = None) -> None:
        if not ok:
            raise self.bad(name, self.get(name, default), why)

    def choice(self, name: str, table: Dict[str, str], default: str) -> str:
        value = self.get(name, default)
        if value not in table:
            raise self.bad(name, value, f"supported: {', '.join(table)}")
        return table[value]

    def integer(self, name: str, default: Any = None) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise CheckpointError(f"{self.source}: {self.field(name)}={value!r} must be an integer")
        return value


def model_config_from_olmo_core(model: Dict[str, Any], *, source: str, max_seq_len: int) -> ModelConfig:
    """Our ModelConfig for an OLMo-core TransformerConfig dict; CheckpointError naming what does not fit."""
    m = _Reader(model, "", source)
    m.need("name", m.get("name", "default") == "default", "only the default Transformer; MoE and nGPT "
           "(normalized) models are not supported", "default")
    m.need("embedding_norm", m.get("embedding_norm") is None, "no norm on the embeddings in qknorm")
    d_model, n_layers = m.integer("d_model"), m.integer("n_layers")
    layers = [_layer(b, i, n_layers, d_model, source) for i, b in enumerate(_block_configs(m, n_layers))]
    first = _same_layers(layers, source)
    (cast, eps), (n_heads, n_kv_heads, head_dim) = first.norm, first.heads
    _check_head(m, first)
    out: Dict[str, Any] = dict(
        vocab_size=m.integer("vocab_size"), d_model=d_model, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=n_kv_heads, head_dim=head_dim, d_ff=first.d_ff, max_seq_len=max_seq_len,
        qk_norm=first.qk_norm, placement=first.placement, norm_type="rmsnorm", norm_eps=eps, norm_cast=cast,
        norm_offset=1.0 if first.placement == "sandwich" and cast == "fp32" else 0.0,
        attention_bias=first.bias, o_proj_bias=first.bias, activation=first.activation,
        embed_scale=_embed_scale(m, d_model), tie_embeddings=bool(m.get("tie_word_embeddings", False)),
        init_std=float(m.get("init_std", 0.02)))
    out.update(_windows_and_rope(layers, source))
    try:
        return ModelConfig(**out)
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _same_layers(layers: List[_Layer], source: str) -> _Layer:
    """The first layer, after checking that the others differ from it only in window and RoPE."""
    first = layers[0]
    for i, layer in enumerate(layers[1:], 1):
        diff = [f.name for f in dataclasses.fields(_Layer) if f.compare and getattr(layer, f.name) !=
                getattr(first, f.name)]
        if diff:
            ours = getattr(first, diff[0])
            raise CheckpointError(f"{source}: block {i} differs from block 0 in {', '.join(diff)} "
                                  f"({getattr(layer, diff[0])!r} vs {ours!r}); qknorm layers differ only in "
                                  "sliding window and RoPE theta")
    return first


def _block_configs(m: _Reader, n_layers: int) -> List[_Reader]:
    """One block config per layer: `block` (with `block_overrides`), or named blocks cycled by `block_pattern`."""
    block, pattern = m.d.get("block"), m.get("block_pattern")
    if not isinstance(block, dict):
        raise CheckpointError(f"{m.source}: block={block!r} is not a JSON object")
    if "sequence_mixer" in block or "attention" in block:  # one block config for every layer
        m.need("block_pattern", pattern is None, "a pattern needs named blocks")
        out = [_Reader(block, "block", m.source)] * n_layers
        for key, override in (m.get("block_overrides") or {}).items():
            i = int(key) if str(key).isdigit() else -1  # JSON object keys are strings
            if not 0 <= i < n_layers:
                raise m.bad("block_overrides", key, f"block index outside 0..{n_layers - 1}")
            out[i] = _Reader(override, f"block_overrides.{key}", m.source)
        return out
    m.need("block_pattern", isinstance(pattern, list) and bool(pattern) and all(p in block for p in pattern),
           f"named blocks need a pattern of their names ({', '.join(map(str, block))})")
    return [_Reader(block[name], f"block.{name}", m.source) for name in islice(cycle(pattern), n_layers)]


def _layer(b: _Reader, index: int, n_layers: int, d_model: int, source: str) -> _Layer:
    placement = b.choice("name", _PLACEMENTS, "default")
    b.need("feed_forward_moe", b.get("feed_forward_moe") is None, "mixture-of-experts blocks are not supported")
    for name in ("attention_residual_alpha", "feed_forward_residual_alpha"):
        b.need(name, b.get(name, 1.0) == 1.0, "no residual scaling in qknorm")
    if b.get("dropout", 0.0):
        warnings.warn(f"{source}: {b.field('dropout')}={b.get('dropout')} is dropped (qknorm has no dropout; "
                      "the model computes the same function in eval mode)", UserWarning, stacklevel=4)
    norm = _norm(b.required("layer_norm", "the block norms must be set"))
    att = b.sub("attention") if b.get("sequence_mixer") is None else b.sub("sequence_mixer")  # old configs: attention
    if att is None:
        raise b.bad("sequence_mixer", None, "a block needs attention")
    n_heads = att.integer("n_heads", 16)
    n_kv_heads = att.integer("n_kv_heads", n_heads)
    head_dim = att.integer("head_dim", d_model // max(n_heads, 1))  # OLMo-core's default, floor division
    qk_norm = _attention(att, norm)
    window, rope = _window(att, index, n_layers), _rope(att, index, n_layers)
    ff = b.required("feed_forward", "a dense feed-forward is required")
    ff.need("name", ff.get("name", "default") == "default", "supported: default", "default")
    ff.need("bias", ff.get("bias", True) is False, "the gated MLP has no biases", True)
    return _Layer(placement, norm, qk_norm, (n_heads, n_kv_heads, head_dim), bool(att.get("bias", True)),
                  ff.integer("hidden_size"), ff.choice("activation", _ACTIVATIONS, "silu"), window, rope)


def _norm(n: _Reader) -> Tuple[str, float]:
    cast = n.choice("name", _NORM_CASTS, "default")
    n.need("elementwise_affine", n.get("elementwise_affine", True) is True, "norms have gains in qknorm")
    n.need("bias", n.get("bias", True) is False, "RMSNorm without a bias only", True)
    return cast, float(n.get("eps", _LN_EPS_DEFAULT))


def _attention(a: _Reader, block_norm: Tuple[str, float]) -> str:
    """Checks the attention options; returns the QK-norm scope."""
    a.need("type", a.get("type", "attention") == "attention", "attention only (no recurrent or convolution "
           "mixers)", "attention")
    a.need("name", a.get("name", "default") == "default", "the default attention (separate q/k/v projections); "
           "fused and normalized attention are not supported", "default")
    for name, why in (("gate", "no attention gating in qknorm"),
                      ("clip_qkv", "not read from OLMo-core: it clamps before its QK-norm, qknorm's clip_qkv after "
                       "it, as transformers' OLMoE does")):
        a.need(name, a.get(name) is None, why)
    for name, why in (("scalable_softmax", "no scalable softmax in qknorm"),
                      ("attention_sinks", "no attention sinks in qknorm"),
                      ("qk_norm_per_head_gains", "one QK-norm gain vector shared by all heads")):
        a.need(name, not a.get(name, False), why)
    if a.get("dropout", 0.0):
        warnings.warn(f"{a.source}: {a.field('dropout')}={a.get('dropout')} is dropped (qknorm has no attention "
                      "dropout; the model computes the same function in eval mode)", UserWarning, stacklevel=5)
    qk = a.sub("qk_norm")
    if qk is None:
        return "none"
    qk_norm = _norm(qk)
    if qk_norm != block_norm:
        raise qk.bad("name", f"{qk.get('name')} eps={qk_norm[1]}", f"qknorm uses one norm type and eps for the "
                     f"block and QK norms; the block norms are {block_norm[0]} eps={block_norm[1]}")
    return "head" if a.get("use_head_qk_norm", False) else "full"


def _window(a: _Reader, index: int, n_layers: int) -> Optional[int]:
    """The sliding window of layer `index` (None = full attention), as SlidingWindowAttentionConfig resolves it."""
    sw = a.sub("sliding_window")
    if sw is None:
        return None
    pattern = sw.get("pattern")
    sw.need("pattern", isinstance(pattern, list) and bool(pattern), "a list of window sizes (-1 = full)")
    first, last = sw.get("force_full_attention_on_first_layer", True), sw.get("force_full_attention_on_last_layer",
                                                                              True)
    if (first and index == 0) or (last and index == n_layers - 1):
        return None
    size = pattern[(index - 1 if first else index) % len(pattern)]
    if size == -1:
        return None
    sw.need("pattern", isinstance(size, int) and size > 0, "window sizes must be positive or -1")
    return size


def _rope(a: _Reader, index: int, n_layers: int) -> Tuple[float, float]:
    """(theta, linear factor) of this layer's RoPE."""
    r = a.required("rope", "attention without RoPE is not supported")
    r.need("name", r.get("name", "default") == "default", "the default (rotate-half) RoPE only", "default")
    r.need("partial_rotary_factor", r.get("partial_rotary_factor", 1.0) == 1.0, "RoPE on the whole head only")
    if r.get("no_global_rope", False) and _window(a, index, n_layers) is None:
        raise r.bad("no_global_rope", True, "full-attention layers without RoPE are not supported")
    theta, factor = float(r.get("theta", _ROPE_THETA_DEFAULT)), 1.0
    s = r.sub("scaling")
    if s is not None:
        # as_config_dict() names the class; as_dict() does not, and PI is the only one with just these fields
        fields = {k for k, v in s.d.items() if v is not None}
        pi = fields <= {"factor", "attention_rescale_factor"}
        kind = str(s.get("_CLASS_", "PIRoPEScalingConfig" if pi else "?")).rsplit(".", 1)[-1]
        s.need("_CLASS_", kind == "PIRoPEScalingConfig", "position interpolation (linear) only",
               f"? (fields {', '.join(sorted(fields))})")
        s.need("attention_rescale_factor", s.get("attention_rescale_factor", 1.0) == 1.0, "no attention rescaling")
        factor = float(s.get("factor", 2.0))
    return theta, factor


def _check_head(m: _Reader, first: _Layer) -> None:
    head = m.required("lm_head", "an LM head is required")
    head.need("name", head.get("name", "default") == "default", "the default LM head only", "default")
    head.need("bias", head.get("bias", True) is False, "no LM head bias in qknorm", True)
    norm = head.required("layer_norm", "qknorm always ends with a final norm")
    if _norm(norm) != first.norm:
        raise norm.bad("name", f"{norm.get('name')} eps={_norm(norm)[1]}", "the final norm must match the block "
                       f"norms ({first.norm[0]} eps={first.norm[1]})")


def _embed_scale(m: _Reader, d_model: int) -> bool:
    scale = m.get("embed_scale")
    if scale is None:
        return False
    # ours multiplies by sqrt(d_model) cast to the weight dtype; OLMo-core's float scalar becomes the same fp32
    m.need("embed_scale", isinstance(scale, (int, float)) and np.float32(scale) == np.float32(math.sqrt(d_model)),
           f"only None or sqrt(d_model) = {math.sqrt(d_model):.6g}")
    return True


def _windows_and_rope(layers: List[_Layer], source: str) -> Dict[str, Any]:
    """sliding_window / global_every / layer_types (in canonical_layers' form, as from_hf writes them) and
    rope_theta / rope_scaling / rope_local_theta from the per-layer values."""
    windows = {lay.window for lay in layers if lay.window is not None}
    if len(windows) > 1:
        raise CheckpointError(f"{source}: sliding windows {sorted(windows)} differ between layers (qknorm has one "
                              "sliding_window for every sliding layer)")
    full = {lay.rope for lay in layers if lay.window is None}
    local = {lay.rope for lay in layers if lay.window is not None}
    for kind, ropes in (("full-attention", full), ("sliding", local)):
        if len(ropes) > 1:
            raise CheckpointError(f"{source}: RoPE (theta, scaling) differs between {kind} layers "
                                  f"({sorted(ropes)}); qknorm has one per layer type")
    (theta, factor), local_rope = next(iter(full or local)), next(iter(local), None)
    out: Dict[str, Any] = dict(rope_theta=theta,
                               rope_scaling=None if factor == 1.0 else {"rope_type": "linear", "factor": factor})
    if local_rope is not None and local_rope != (theta, factor):  # else the sliding layers share the full RoPE
        if local_rope[1] != 1.0:
            raise CheckpointError(f"{source}: sliding layers with their own scaled RoPE (theta, factor) = "
                                  f"{local_rope} are not supported (their RoPE is the full layers' or unscaled)")
        out["rope_local_theta"] = local_rope[0]
    types = tuple(FULL if lay.window is None else SLIDING for lay in layers)
    out.update(canonical_layers(types, next(iter(windows), None)))
    return out


def sequence_length_of_run(run: Dict[str, Any]) -> Optional[int]:
    """The training sequence length recorded in a trainer's config.json, if any: train_module.max_sequence_length,
    else dataset.sequence_length (OLMo-core's experiment configs)."""
    for section, key in (("train_module", "max_sequence_length"), ("dataset", "sequence_length")):
        value = run.get(section, {}).get(key) if isinstance(run.get(section), dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
