"""The fields of each HF family whose QK-norm or RoPE is a variant (config_variants.py), read and written.

Each family's hooks (rows in hf_families.py):
  prepare(cfg, source) -> cfg         rewrite the HF dict into a form the generic reader takes
  read(get, out, source) -> fields    ModelConfig fields from the HF dict (`get`: its value, else the class
                                      default; `out`: the fields read so far, the layers among them)
  write(config, out) -> bad           add the family's HF keys to `out`; 'field=value (why)' for what it cannot hold

  cohere            use_qk_norm -> per-head LayerNorm (no bias) on q/k over head_dim; parallel block; bias-free
                    LayerNorms; interleaved RoPE; logit_scale
  stablelm          qk_layernorm -> per-head LayerNorm (no bias); LayerNorms with bias; use_parallel_residual;
                    partial_rotary_factor; use_qkv_bias on q/k/v (never o)
  exaone4           RoPE only on the sliding layers when sliding_window is set (the global layers are NoPE)
  hunyuan_v1_dense  QK-norm after RoPE; its "dynamic" RoPE with a fixed alpha is plain RoPE with
                    theta * alpha**(D/(D-2)) (what transformers computes for it)
  olmo              OLMo 1: LayerNorms without gain or bias at transformers' fixed eps 1e-5 (no eps field in
                    its config), no QK-norm; clip_qkv
  olmoe             every layer sparse; clip_qkv (clamped after its full-width QK-norm)
  llama4_text       use_qk_norm -> weightless RMSNorm after RoPE on the RoPE layers; no_rope_layers (0 = NoPE);
                    attn_temperature_tuning on NoPE layers; chunked attention; interleaved RoPE; MoE layers
                    (moe_layers / interleave_moe_layer_step): sigmoid router on the inputs, a shared expert
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

from ..config import CHUNKED, FULL, SLIDING, ModelConfig
from ..config_moe import expert_d_ff, layer_is_moe
from ..errors import CheckpointError

Get = Callable[[str], Any]


def _reject(source: str, field: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"{source}: {field}={value!r} is not supported ({why})")


def _layer_types(out: Dict[str, Any]) -> List[str]:
    """The per-layer types of the fields read so far (hf_config.canonical_layers' forms)."""
    n = out["n_layers"]
    if out.get("layer_types"):
        return list(out["layer_types"])
    if out.get("sliding_window") is None:
        return [FULL] * n
    g = out.get("global_every", 1)
    return [FULL if g and (i + 1) % g == 0 else SLIDING for i in range(n)]


# ---------------------------------------------------------------------------------------------- cohere
def read_cohere(get: Get, out: Dict[str, Any], source: str) -> Dict[str, Any]:
    if get("logit_scale") is None:
        raise _reject(source, "logit_scale", None, "transformers multiplies the logits by it")
    fields = dict(placement="parallel", norm_type="layernorm", layernorm_bias=False,
                  rope_interleaved=True, logit_scale=float(get("logit_scale")))
    fields.update(_per_head_layernorm() if get("use_qk_norm") else dict(qk_norm="none"))
    return fields


def _per_head_layernorm() -> Dict[str, Any]:
    return dict(qk_norm="head", qk_norm_type="layernorm", qk_norm_gain="per_head")


def write_cohere(c: ModelConfig, out: Dict[str, Any]) -> List[str]:
    out.update(use_qk_norm=c.qk_norm.value != "none", logit_scale=c.logit_scale)
    return []


# ---------------------------------------------------------------------------------------------- stablelm
def prepare_stablelm(cfg: Dict[str, Any], source: str) -> Dict[str, Any]:
    """partial_rotary_factor out of the RoPE parameters (the generic RoPE reader refuses it) to the top level."""
    cfg = dict(cfg)
    factor = cfg.get("partial_rotary_factor")
    for key in ("rope_scaling", "rope_parameters"):
        if isinstance(cfg.get(key), dict) and "partial_rotary_factor" in cfg[key]:
            params = dict(cfg[key])
            factor = params.pop("partial_rotary_factor")
            cfg[key] = params
    if factor is not None:
        cfg["partial_rotary_factor"] = factor
    return cfg


def read_stablelm(get: Get, out: Dict[str, Any], source: str) -> Dict[str, Any]:
    fields = dict(placement="parallel" if get("use_parallel_residual") else "pre", norm_type="layernorm",
                  layernorm_bias=True, rope_fraction=float(get("partial_rotary_factor")),
                  head_dim=out["d_model"] // out["n_heads"])  # transformers' StableLM ignores a head_dim field
    fields.update(_per_head_layernorm() if get("qk_layernorm") else dict(qk_norm="none"))
    return fields


def write_stablelm(c: ModelConfig, out: Dict[str, Any]) -> List[str]:
    out.update(use_qkv_bias=c.attention_bias, qk_layernorm=c.qk_norm.value != "none",
               use_parallel_residual=c.placement.value == "parallel", partial_rotary_factor=c.rope_fraction)
    out["rope_parameters"] = {**out["rope_parameters"], "partial_rotary_factor": c.rope_fraction}
    bad = []
    if c.head_dim * c.n_heads != c.d_model:
        bad.append(f"head_dim={c.head_dim} (stablelm's head_dim is hidden_size // num_attention_heads)")
    if c.o_proj_bias:
        bad.append("o_proj_bias=True (stablelm has no bias on the output projection)")
    return bad


# ---------------------------------------------------------------------------------------------- exaone4
def read_exaone4(get: Get, out: Dict[str, Any], source: str) -> Dict[str, Any]:
    """With sliding_window set, only the sliding layers apply RoPE (the global ones are NoPE)."""
    if get("sliding_window") is None:
        return {}
    return dict(nope_layers=tuple(i for i, t in enumerate(_layer_types(out)) if t != SLIDING))


def write_exaone4(c: ModelConfig, out: Dict[str, Any]) -> List[str]:
    if c.nope_layers:  # the window must be set for transformers to drop RoPE on the global layers
        out["sliding_window"] = c.sliding_window or 4096
    elif SLIDING not in c.resolved_layer_types():
        out["sliding_window"] = None
    return []


# ---------------------------------------------------------------------------------------------- hunyuan
def prepare_hunyuan(cfg: Dict[str, Any], source: str) -> Dict[str, Any]:
    """A "dynamic" RoPE with a fixed alpha (HunYuan's NTK-alpha) as the plain RoPE transformers makes of it."""
    params = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
    if params.get("rope_type", params.get("type")) != "dynamic" or not params.get("alpha"):
        return cfg
    theta = params.get("rope_theta", cfg.get("rope_theta") or 1e4)
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    base = theta * params["alpha"] ** (dim / (dim - 2))  # transformers' compute_ntk_alpha_rope_parameters
    return {**cfg, "rope_scaling": None, "rope_parameters": {"rope_type": "default", "rope_theta": base}}


def read_hunyuan(get: Get, out: Dict[str, Any], source: str) -> Dict[str, Any]:
    return dict(qk_norm_after_rope=True)


# ---------------------------------------------------------------------------------------------- olmo (OLMo 1)
OLMO_EPS = 1e-5  # transformers' OlmoLayerNorm hard-codes it; OlmoConfig has no eps field


def prepare_olmo(cfg: Dict[str, Any], source: str) -> Dict[str, Any]:
    """The fixed LayerNorm eps as the field the generic reader takes (whatever a config.json says there)."""
    return {**cfg, "layer_norm_eps": OLMO_EPS}


def _clip(get: Get, source: str) -> Dict[str, Any]:
    value = get("clip_qkv")
    if value is None:
        return {}
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _reject(source, "clip_qkv", value, "a positive number or null")
    return dict(clip_qkv=float(value))


def read_olmo(get: Get, out: Dict[str, Any], source: str) -> Dict[str, Any]:
    if out["head_dim"] * out["n_heads"] != out["d_model"]:  # OlmoConfig has no head_dim field
        raise _reject(source, "head_dim", out["head_dim"], "olmo's head_dim is hidden_size // num_attention_heads")
    return dict(norm_type="layernorm", layernorm_weight=False, layernorm_bias=False, **_clip(get, source))


def write_olmo(c: ModelConfig, out: Dict[str, Any]) -> List[str]:
    del out["layer_norm_eps"]  # not a field of OlmoConfig (the read-back check holds norm_eps to OLMO_EPS)
    out.update(clip_qkv=c.clip_qkv)
    return []


# ---------------------------------------------------------------------------------------------- llama4_text
def read_llama4(get: Get, out: Dict[str, Any], source: str) -> Dict[str, Any]:
    n = out["n_layers"]
    interval = int(get("no_rope_layer_interval"))
    no_rope = get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    if len(no_rope) != n:
        raise _reject(source, "no_rope_layers", no_rope, f"one entry per layer, {n} layers")
    chunk = get("attention_chunk_size")
    types = get("layer_types") or [CHUNKED if r and chunk is not None else FULL for r in no_rope]
    fields: Dict[str, Any] = dict(rope_interleaved=True, nope_layers=tuple(i for i, r in enumerate(no_rope) if not r))
    if get("use_qk_norm"):
        fields.update(qk_norm="head", qk_norm_type="rms", qk_norm_gain="none", qk_norm_after_rope=True,
                      qk_norm_layers="rope")
    else:
        fields["qk_norm"] = "none"
    if get("attn_temperature_tuning"):
        fields.update(nope_attn_scale=float(get("attn_scale")), nope_floor_scale=float(get("floor_scale")))
    if CHUNKED in types:
        fields.update(layer_types=tuple(types), attention_chunk=int(chunk))
    elif any(t != FULL for t in types):
        raise _reject(source, "layer_types", list(types), "llama4_text layers are chunked_attention or full_attention")
    return {**fields, **_llama4_moe(get, n, source)}


def _llama4_moe(get: Get, n: int, source: str) -> Dict[str, Any]:
    """Llama 4's sparse layers (moe_layers, else every interleave_moe_layer_step-th): num_local_experts of width
    intermediate_size, top-k of the logits with sigmoid scores on the inputs, one shared expert."""
    step = int(get("interleave_moe_layer_step"))
    moe = get("moe_layers")
    moe = sorted(set(range(step - 1, n, step) if moe is None else moe))
    if not moe:
        return {}
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n for i in moe):
        raise _reject(source, "moe_layers", moe, f"layer indices in 0..{n - 1}")
    periodic = next((s for s in range(1, n + 1) if moe == list(range(s - 1, n, s))), None)
    layers = dict(moe_every=periodic) if periodic else dict(dense_layers=tuple(i for i in range(n) if i not in moe))
    return dict(n_experts=int(get("num_local_experts")), experts_per_token=int(get("num_experts_per_tok")),
                moe_d_ff=int(get("intermediate_size")), moe_router="sigmoid", moe_shared_expert=True, **layers)


def write_llama4(c: ModelConfig, out: Dict[str, Any]) -> List[str]:
    types = list(c.resolved_layer_types())
    out.update(use_qk_norm=c.qk_norm.value != "none", no_rope_layers=[int(i not in c.nope_layers)
                                                                       for i in range(c.n_layers)],
               attn_temperature_tuning=c.nope_attn_scale is not None, attn_scale=c.nope_attn_scale or 0.1,
               floor_scale=int(c.nope_floor_scale), attention_chunk_size=c.attention_chunk, layer_types=types,
               moe_layers=[i for i in range(c.n_layers) if layer_is_moe(c, i)], intermediate_size=c.d_ff)
    bad = [] if SLIDING not in types else ["sliding_window (llama4_text has chunked, not sliding, attention)"]
    if c.n_experts:
        out.update(num_local_experts=c.n_experts, num_experts_per_tok=c.experts_per_token,
                   intermediate_size=expert_d_ff(c), interleave_moe_layer_step=1)
        if c.moe_router.value != "sigmoid" or not c.moe_shared_expert:
            bad.append(f"moe_router={c.moe_router.value!r}, moe_shared_expert={c.moe_shared_expert} (llama4_text's "
                       "experts: sigmoid router on the inputs and a shared expert)")
    if not float(c.nope_floor_scale).is_integer():
        bad.append(f"nope_floor_scale={c.nope_floor_scale} (transformers' floor_scale is an integer)")
    return bad



# ---------------------------------------------------------------------------------------------- olmoe, qwen3_moe
def _read_moe(get: Get, out: Dict[str, Any], source: str, expert_ff: str) -> Dict[str, Any]:
    n = get("num_local_experts") or get("num_experts")  # Qwen3MoeConfig.to_dict writes its alias
    if n is None or int(n) < 1:
        raise _reject(source, "num_experts", n, "a mixture-of-experts family needs experts")
    return dict(n_experts=int(n), experts_per_token=int(get("num_experts_per_tok")),
                moe_d_ff=int(get(expert_ff)), norm_topk_prob=bool(get("norm_topk_prob")))


def read_olmoe(get: Get, out: Dict[str, Any], source: str) -> Dict[str, Any]:
    """Every layer sparse; intermediate_size is the experts' width; full-width QK-norm over hidden_size."""
    if out["head_dim"] * out["n_heads"] != out["d_model"]:
        raise _reject(source, "head_dim", out["head_dim"], "olmoe's q/k norms span hidden_size = heads * head_dim")
    return {**_read_moe(get, out, source, "intermediate_size"), **_clip(get, source)}


def write_olmoe(c: ModelConfig, out: Dict[str, Any]) -> List[str]:
    out.update(num_experts=c.n_experts, num_experts_per_tok=c.experts_per_token, intermediate_size=c.moe_d_ff or
               c.d_ff, norm_topk_prob=c.norm_topk_prob, clip_qkv=c.clip_qkv)
    bad = []
    if c.head_dim * c.n_heads != c.d_model:
        bad.append(f"head_dim={c.head_dim} (olmoe's q/k norms need head_dim = hidden_size // num_attention_heads)")
    if c.moe_every != 1 or c.dense_layers:
        bad.append("dense_layers/moe_every (every olmoe layer is a mixture of experts)")
    return bad


def prepare_qwen3_moe(cfg: Dict[str, Any], source: str) -> Dict[str, Any]:
    """transformers keeps sliding_window only when use_sliding_window (then on every layer, 4096 by default)."""
    if not cfg.get("use_sliding_window"):
        return {**cfg, "sliding_window": None}
    return {**cfg, "sliding_window": cfg.get("sliding_window", 4096)}


def read_qwen3_moe(get: Get, out: Dict[str, Any], source: str) -> Dict[str, Any]:
    """Layer i sparse iff not in mlp_only_layers and (i+1) % decoder_sparse_step == 0; dense layers are
    intermediate_size wide, experts moe_intermediate_size."""
    fields = _read_moe(get, out, source, "moe_intermediate_size")
    fields.update(moe_every=int(get("decoder_sparse_step")), dense_layers=tuple(sorted(get("mlp_only_layers") or ())))
    return fields


def write_qwen3_moe(c: ModelConfig, out: Dict[str, Any]) -> List[str]:
    out.update(num_experts=c.n_experts, num_experts_per_tok=c.experts_per_token, moe_intermediate_size=c.moe_d_ff
               or c.d_ff, norm_topk_prob=c.norm_topk_prob, decoder_sparse_step=c.moe_every,
               mlp_only_layers=list(c.dense_layers), use_sliding_window=out.get("sliding_window") is not None)
    return []
