"""One flat state-dict key map per HF family (our key -> HF key), checked both ways, and Gemma's offset check.

Every key of our model must come from exactly one HF key of the right shape, and every HF key must be used
(as nanoGPT's `from_pretrained` does). The only HF keys dropped on purpose are listed in
`_IGNORED` (old checkpoints' rotary tables, a multimodal Gemma 3's vision tower and projector) and a tied
`lm_head.weight` that equals the embedding. An HF name with `{h}` is one tensor per head (StableLM's per-head
LayerNorms, `norms.{h}.weight`, each (head_dim,)): our (heads, head_dim) tensor is their stack along dim 0; `{e}`
likewise one tensor per expert (OLMoE/Qwen3-MoE `mlp.experts.{e}.gate_proj.weight`, (F, d)) stacked into our
(E, F, d). transformers 5 holds its experts fused in memory (`mlp.experts.gate_up_proj` (E, 2F, d),
`mlp.experts.down_proj` (E, d, F)) but saves them per expert; both forms are read, the per-expert one written.
Llama 4 holds and saves its experts fused and transposed (`feed_forward.experts.gate_up_proj` (E, d, 2F),
`down_proj` (E, F, d)): read and written in that form, split into our layout in between.

Gemma 3 stores its RMSNorm weights as offsets (scale = 1 + w, zero init); we keep them stored that way
(`norm_offset=1.0`). A checkpoint whose offsets were already folded into plain scales (w' = 1 + w, as a
conversion to a 1-centred RMSNorm does) would be used as 1 + w' = 2 + w: twice the intended gain, silently.
`check_gemma_offsets` catches that: in real and freshly initialized Gemma checkpoints the offsets of the norms
scatter around small values, while folded ones all sit near 1. If *every* norm weight vector of the model has
its mean in [0.5, 1.5], we raise; `allow_folded=True` skips the check for a checkpoint that really is so.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Mapping, Tuple

import torch

from ..errors import CheckpointError

_COMMON = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
    "layers.{i}.attn.q_proj.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.attn.k_proj.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.attn.v_proj.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.attn.o_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.attn.q_proj.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "layers.{i}.attn.k_proj.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "layers.{i}.attn.v_proj.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "layers.{i}.attn.o_proj.bias": "model.layers.{i}.self_attn.o_proj.bias",
    "layers.{i}.attn.q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "layers.{i}.attn.k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "layers.{i}.mlp.gate_proj.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.mlp.up_proj.weight": "model.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.mlp.down_proj.weight": "model.layers.{i}.mlp.down_proj.weight",
}
_PRE_NORMS = {  # Llama/Qwen2/Qwen3/Mistral: post_attention_layernorm is the pre-MLP norm
    "layers.{i}.attn_norm_in.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.mlp_norm_in.weight": "model.layers.{i}.post_attention_layernorm.weight",
}
_OURS = ".ours"  # suffix of Llama 4's experts split into our layout (never a key on disk)
_MOE = {  # our stacked experts (E, F, d) / (E, d, F) <- one HF tensor per expert (as saved), stacked along dim 0
    "layers.{i}.mlp.router.weight": "model.layers.{i}.mlp.gate.weight",
    "layers.{i}.mlp.gate_proj": "model.layers.{i}.mlp.experts.{e}.gate_proj.weight",
    "layers.{i}.mlp.up_proj": "model.layers.{i}.mlp.experts.{e}.up_proj.weight",
    "layers.{i}.mlp.down_proj": "model.layers.{i}.mlp.experts.{e}.down_proj.weight",
}
KEY_MAPS: Dict[str, Dict[str, str]] = {
    "llama": {**_COMMON, **_PRE_NORMS},
    "qwen3": {**_COMMON, **_PRE_NORMS},
    "qwen2": {**_COMMON, **_PRE_NORMS},
    "mistral": {**_COMMON, **_PRE_NORMS},
    "olmo": {**_COMMON, **_PRE_NORMS},  # its LayerNorms have no weights: no norm keys on either side
    "olmo2": {**_COMMON,  # norms on the sub-layer outputs, no input norm
              "layers.{i}.attn_norm_out.weight": "model.layers.{i}.post_attention_layernorm.weight",
              "layers.{i}.mlp_norm_out.weight": "model.layers.{i}.post_feedforward_layernorm.weight"},
    "olmo3": {**_COMMON,
              "layers.{i}.attn_norm_out.weight": "model.layers.{i}.post_attention_layernorm.weight",
              "layers.{i}.mlp_norm_out.weight": "model.layers.{i}.post_feedforward_layernorm.weight"},
    "exaone4": {**_COMMON,
                "layers.{i}.attn_norm_out.weight": "model.layers.{i}.post_attention_layernorm.weight",
                "layers.{i}.mlp_norm_out.weight": "model.layers.{i}.post_feedforward_layernorm.weight"},
    "hunyuan_v1_dense": {**_COMMON, **_PRE_NORMS,
                         "layers.{i}.attn.q_norm.weight": "model.layers.{i}.self_attn.query_layernorm.weight",
                         "layers.{i}.attn.k_norm.weight": "model.layers.{i}.self_attn.key_layernorm.weight"},
    "cohere": {**_COMMON,  # one input norm shared by the parallel attention and MLP; q/k norms (heads, head_dim)
               "layers.{i}.attn_norm_in.weight": "model.layers.{i}.input_layernorm.weight"},
    "stablelm": {**_COMMON, **_PRE_NORMS,  # LayerNorms with biases; one LayerNorm per head on q and k, stacked
                 "layers.{i}.attn_norm_in.bias": "model.layers.{i}.input_layernorm.bias",
                 "layers.{i}.mlp_norm_in.bias": "model.layers.{i}.post_attention_layernorm.bias",
                 "norm.bias": "model.norm.bias",
                 "layers.{i}.attn.q_norm.weight": "model.layers.{i}.self_attn.q_layernorm.norms.{h}.weight",
                 "layers.{i}.attn.k_norm.weight": "model.layers.{i}.self_attn.k_layernorm.norms.{h}.weight"},
    "llama4_text": {**{k: v for k, v in _COMMON.items() if ".mlp." not in k}, **_PRE_NORMS,  # dense layers
                    "layers.{i}.mlp.gate_proj.weight": "model.layers.{i}.feed_forward.gate_proj.weight",
                    "layers.{i}.mlp.up_proj.weight": "model.layers.{i}.feed_forward.up_proj.weight",
                    "layers.{i}.mlp.down_proj.weight": "model.layers.{i}.feed_forward.down_proj.weight",
                    # sparse layers: router, fused experts (split into our layout: _LLAMA4_EXPERTS), shared expert
                    "layers.{i}.mlp.router.weight": "model.layers.{i}.feed_forward.router.weight",
                    **{f"layers.{{i}}.mlp.{p}": f"model.layers.{{i}}.feed_forward.experts.{p}{_OURS}"
                       for p in ("gate_proj", "up_proj", "down_proj")},
                    **{f"layers.{{i}}.mlp.shared.{p}.weight":
                       f"model.layers.{{i}}.feed_forward.shared_expert.{p}.weight"
                       for p in ("gate_proj", "up_proj", "down_proj")}},
    "olmoe": {**_COMMON, **_PRE_NORMS, **_MOE},
    "qwen3_moe": {**_COMMON, **_PRE_NORMS, **_MOE},  # dense layers (mlp_only_layers) keep _COMMON's MLP keys
    "gemma3_text": {**_COMMON,
                    "layers.{i}.attn_norm_in.weight": "model.layers.{i}.input_layernorm.weight",
                    "layers.{i}.attn_norm_out.weight": "model.layers.{i}.post_attention_layernorm.weight",
                    "layers.{i}.mlp_norm_in.weight": "model.layers.{i}.pre_feedforward_layernorm.weight",
                    "layers.{i}.mlp_norm_out.weight": "model.layers.{i}.post_feedforward_layernorm.weight"},
}

# multimodal Gemma 3: the text model's keys under these prefixes (v5 module names, and the on-disk form)
_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
             ("language_model.lm_head.", "lm_head."))
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$|^(model\.)?(vision_tower|multi_modal_projector)\.")
_LAYER = re.compile(r"^layers\.(\d+)\.")
_FUSED = re.compile(r"^(.*\.mlp\.experts\.)(gate_up_proj|down_proj)$")  # transformers 5's in-memory experts
_STACK = ("{h}", "{e}")  # one HF tensor per head / per expert


def _unfuse_experts(key: str, value: torch.Tensor) -> Dict[str, torch.Tensor]:
    """transformers 5's in-memory experts as the per-expert tensors it saves: gate_up_proj (E, 2F, d) is
    gate (first F rows) and up; down_proj (E, d, F). Views, no copies."""
    m = _FUSED.match(key)
    if m is None or value.ndim != 3:
        return {key: value}
    prefix, kind = m.groups()
    if kind == "down_proj":
        return {f"{prefix}{e}.down_proj.weight": t for e, t in enumerate(value.unbind(0))}
    gate, up = value.chunk(2, dim=1)
    return {**{f"{prefix}{e}.gate_proj.weight": t for e, t in enumerate(gate.unbind(0))},
            **{f"{prefix}{e}.up_proj.weight": t for e, t in enumerate(up.unbind(0))}}


_LLAMA4_EXPERTS = re.compile(r"^(.*\.feed_forward\.experts\.)(gate_up_proj|down_proj)$")


def _split_llama4_experts(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Llama 4's fused experts in our layout: gate_up_proj (E, d, 2F) -> gate, up (E, F, d) (its first F columns
    are the gate); down_proj (E, F, d) -> (E, d, F). Under the `_OURS` names of the key map."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _LLAMA4_EXPERTS.match(key)
        if m is None or value.ndim != 3:
            out[key] = value
        elif m.group(2) == "down_proj":
            out[f"{m.group(1)}down_proj{_OURS}"] = value.transpose(1, 2)
        else:
            gate, up = value.transpose(1, 2).chunk(2, dim=1)  # (E, 2F, d) -> (E, F, d) each
            out.update({f"{m.group(1)}gate_proj{_OURS}": gate, f"{m.group(1)}up_proj{_OURS}": up})
    return out


def _fuse_llama4_experts(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Inverse of `_split_llama4_experts`: our gate, up, down under `_OURS` names -> gate_up_proj, down_proj."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.endswith(_OURS):
            out[key] = value
        elif key.endswith(f"down_proj{_OURS}"):
            out[key[:-len(f"down_proj{_OURS}")] + "down_proj"] = value.transpose(1, 2).contiguous()
        elif key.endswith(f"gate_proj{_OURS}"):
            prefix = key[:-len(f"gate_proj{_OURS}")]
            up = state[f"{prefix}up_proj{_OURS}"]
            out[prefix + "gate_up_proj"] = torch.cat([value, up], dim=1).transpose(1, 2).contiguous()
    return out


def normalize_hf_keys(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip a multimodal text prefix and drop the keys listed in `_IGNORED`."""
    out = {}
    for key, value in state.items():
        if _IGNORED.search(key):
            continue
        for old, new in _PREFIXES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out.update(_unfuse_experts(key, value))
    return out


def hf_key(model_type: str, ours: str) -> str:
    """The HF name of our state-dict key `ours` (e.g. 'layers.3.attn.q_norm.weight')."""
    m = _LAYER.match(ours)
    template = "layers.{i}." + ours[m.end():] if m else ours
    try:
        name = KEY_MAPS[model_type][template]
    except KeyError:
        raise CheckpointError(f"our key {ours!r} has no {model_type} counterpart in transformers") from None
    return name.replace("{i}", m.group(1)) if m else name


def hf_state_to_ours(hf_state: Mapping[str, torch.Tensor], model_type: str,
                     expected: Mapping[str, Tuple[int, ...]], *, tied: bool, source: str) -> Dict[str, torch.Tensor]:
    """Map HF tensors onto our keys; every key used once, every shape as `expected` (our key -> shape)."""
    state = normalize_hf_keys(hf_state)
    if model_type == "llama4_text":
        state = _split_llama4_experts(state)
    out: Dict[str, torch.Tensor] = {}
    used = set()
    for ours, shape in expected.items():
        name = hf_key(model_type, ours)
        mark = next((m for m in _STACK if m in name), None)
        if mark:  # one HF tensor per head or expert, stacked
            names = [name.replace(mark, str(h)) for h in range(shape[0])]
            missing = [n for n in names if n not in state]
            if missing:
                raise CheckpointError(f"{source}: missing key {missing[0]!r} (qknorm {ours!r}, shape {tuple(shape)})")
            out[ours] = _stacked(source, names, [state[n] for n in names], tuple(shape))
            used.update(names)
            continue
        if name not in state:
            raise CheckpointError(f"{source}: missing key {name!r} (qknorm {ours!r}, shape {tuple(shape)})")
        t = state[name]
        if tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{source}: key {name!r} has shape {tuple(t.shape)} but the config implies "
                                  f"{tuple(shape)}")
        out[ours] = t
        used.add(name)
    if tied and "lm_head.weight" in state:
        head, emb = state["lm_head.weight"], out["embed.weight"]
        if head.shape != emb.shape or not torch.equal(head, emb):
            raise CheckpointError(f"{source}: tie_word_embeddings is true but 'lm_head.weight' differs from "
                                  "'model.embed_tokens.weight'; set tie_word_embeddings to false in config.json "
                                  "to use the separate head")
        used.add("lm_head.weight")
    extra = sorted(set(state) - used)
    if extra:
        raise CheckpointError(f"{source}: unexpected key {extra[0]!r} ({len(extra)} unused); it has no place in a "
                              f"{model_type} model of this config")
    return out


def _stacked(source: str, names, tensors, shape: Tuple[int, ...]) -> torch.Tensor:
    for name, t in zip(names, tensors):
        if tuple(t.shape) != shape[1:]:
            raise CheckpointError(f"{source}: key {name!r} has shape {tuple(t.shape)} but the config implies "
                                  f"{shape[1:]}")
    return torch.stack(tensors)  # (heads, head_dim) or (experts, *expert_shape)


def ours_state_to_hf(state: Mapping[str, torch.Tensor], model_type: str) -> Dict[str, torch.Tensor]:
    """Our state dict under HF names (a tied head is not stored, as transformers' save_pretrained does); a
    per-head stack becomes one tensor per head."""
    out: Dict[str, torch.Tensor] = {}
    for k, v in state.items():
        name = hf_key(model_type, k)
        mark = next((m for m in _STACK if m in name), None)
        if mark:
            out.update({name.replace(mark, str(h)): row for h, row in enumerate(v.unbind(0))})
        else:
            out[name] = v
    return _fuse_llama4_experts(out) if model_type == "llama4_text" else out


def _norm_vectors(state: Mapping[str, torch.Tensor]) -> Iterable[Tuple[str, torch.Tensor]]:
    return ((k, v) for k, v in state.items() if k.endswith("norm.weight") or "_norm_" in k)


def check_gemma_offsets(state: Mapping[str, torch.Tensor], *, source: str, allow_folded: bool = False) -> None:
    """Raise if every Gemma norm weight (stored as an offset, scale = 1 + w) looks already folded to 1 + w."""
    if allow_folded:
        return
    means = {k: float(v.float().mean()) for k, v in _norm_vectors(state)}
    if means and all(0.5 <= m <= 1.5 for m in means.values()):
        lo, hi = min(means.values()), max(means.values())
        raise CheckpointError(
            f"{source}: the Gemma norm weights look already folded (every one of the {len(means)} norm weight "
            f"vectors has a mean in [{lo:.3f}, {hi:.3f}], near 1, but Gemma stores offsets, scale = 1 + w, near 0); "
            "loading them would double the gains. Store w = scale - 1, or pass allow_folded=True if the "
            "checkpoint really is so")
