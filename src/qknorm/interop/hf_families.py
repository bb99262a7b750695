"""The Hugging Face families qknorm reads and writes, as data: one `Family` row each.

A row holds the family's HF model_type and architecture, the numerics our model needs to be the same function
(placement, QK-norm scope, norm cast and offset, embedding scale), the class defaults of transformers 5.x for every
field we read (`save_pretrained` may leave out a field that equals its default; a test keeps them in sync), and,
for the families whose QK-norm or RoPE is a variant (config_variants.py), the hooks that read and write the fields
of that variant (hf_variants.py). `Family.accepts` is how writing finds the family of a config (hf_config.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..config import ModelConfig
from . import hf_variants as V

SUPPORTED_MODEL_TYPES = ("olmo", "olmo2", "olmo3", "gemma3_text", "gemma3", "qwen3", "qwen2", "llama", "mistral",
                         "cohere", "stablelm", "exaone4", "hunyuan_v1_dense", "llama4_text", "olmoe", "qwen3_moe")


@dataclasses.dataclass(frozen=True)
class Family:
    """One HF family: names, the numerics our model must use, and transformers' class defaults."""

    model_type: str
    architecture: str
    placement: str
    qk_norm: str
    norm_cast: str
    norm_offset: float
    embed_scale: bool
    act_field: str  # "hidden_act" or, for Gemma, "hidden_activation"
    defaults: Dict[str, Any]
    has_query_scalar: bool = False  # query_pre_attn_scalar
    has_final_softcap: bool = False  # final_logit_softcapping
    per_type_rope: bool = False  # rope_parameters keyed by layer type (Gemma 3)
    # "none" | "layer_types" (Gemma 3) | "qwen" (use_sliding_window + layer_types) | "all" (Mistral: every layer)
    sliding: str = "none"
    # "flag": attention_bias on q, k, v and o | "qkv": always q, k, v, never o | "none" | "use_qkv_bias" (StableLM:
    # that flag on q, k, v, never o)
    bias: str = "flag"
    eps_field: str = "rms_norm_eps"  # "layer_norm_eps" for the LayerNorm families
    d_ff_field: str = "intermediate_size"  # Llama 4's dense MLP: intermediate_size_mlp
    # the family's own fields (hf_variants.py): rewrite the HF dict before reading, read ModelConfig fields from
    # it, and write them back (HF keys, plus every field the family cannot represent as 'field=value (why)')
    prepare: Optional[Callable[[Dict[str, Any], str], Dict[str, Any]]] = None
    read: Optional[Callable[..., Dict[str, Any]]] = None
    write: Optional[Callable[[ModelConfig], Tuple[Dict[str, Any], List[str]]]] = None
    # the ModelConfig values (enum values as strings) by which `infer_family` recognises the family, beyond its
    # placement and qk_norm; a tuple allows several
    signature: Dict[str, Tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    # mixture-of-experts MLPs (n_experts > 0); a dense family never takes a sparse config; None: either (Llama 4)
    moe: Optional[bool] = False
    clip_qkv: bool = False  # the family clamps q, k, v when its config's clip_qkv is set (OLMo 1, OLMoE)

    def accepts(self, config: ModelConfig) -> bool:
        """Whether `config` has this family's signature (placement, QK-norm scope and the fields listed)."""
        want = {"placement": (self.placement,), "qk_norm": (self.qk_norm,), "norm_type": ("rmsnorm",),
                "rope_interleaved": (False,), "qk_norm_after_rope": (False,), "layernorm_weight": (True,),
                "moe_router": ("softmax",), "moe_shared_expert": (False,), **self.signature}
        if self.moe is not None and (config.n_experts > 0) != self.moe:
            return False
        return all(getattr(getattr(config, f), "value", getattr(config, f)) in ok for f, ok in want.items())


_SHAPE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
FAMILIES: Dict[str, Family] = {
    "llama": Family(
        "llama", "LlamaForCausalLM", "pre", "none", "input", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (32000, 4096, 11008, 32, 32)), num_key_value_heads=None, head_dim=None, rms_norm_eps=1e-6,
             max_position_embeddings=2048, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
             hidden_act="silu", initializer_range=0.02, rope_theta=10000.0)),
    "qwen3": Family(
        "qwen3", "Qwen3ForCausalLM", "pre", "head", "input", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (151936, 4096, 22016, 32, 32)), num_key_value_heads=32, head_dim=128, rms_norm_eps=1e-6,
             max_position_embeddings=32768, tie_word_embeddings=False, attention_bias=False, hidden_act="silu",
             initializer_range=0.02, rope_theta=10000.0, use_sliding_window=False, sliding_window=4096,
             max_window_layers=28),
        sliding="qwen"),
    "qwen2": Family(
        "qwen2", "Qwen2ForCausalLM", "pre", "none", "input", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (151936, 4096, 22016, 32, 32)), num_key_value_heads=32, head_dim=None, rms_norm_eps=1e-6,
             max_position_embeddings=32768, tie_word_embeddings=False, hidden_act="silu", initializer_range=0.02,
             rope_theta=10000.0, use_sliding_window=False, sliding_window=4096, max_window_layers=28),
        sliding="qwen", bias="qkv"),
    "mistral": Family(
        "mistral", "MistralForCausalLM", "pre", "none", "input", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (32000, 4096, 14336, 32, 32)), num_key_value_heads=8, head_dim=None, rms_norm_eps=1e-6,
             max_position_embeddings=131072, tie_word_embeddings=False, hidden_act="silu", initializer_range=0.02,
             rope_theta=10000.0, sliding_window=4096),
        sliding="all", bias="none"),
    "olmo": Family(  # OLMo 1: Llama's block with non-parametric LayerNorms (eps 1e-5, fp32), no QK-norm, clip_qkv
        "olmo", "OlmoForCausalLM", "pre", "none", "input", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (50304, 4096, 11008, 32, 32)), num_key_value_heads=None, max_position_embeddings=2048,
             tie_word_embeddings=False, attention_bias=False, hidden_act="silu", initializer_range=0.02,
             rope_theta=1e4, clip_qkv=None),
        eps_field="layer_norm_eps", prepare=V.prepare_olmo, read=V.read_olmo, write=V.write_olmo,
        signature=dict(norm_type=("layernorm",), layernorm_weight=(False,)), clip_qkv=True),
    "olmo2": Family(
        "olmo2", "Olmo2ForCausalLM", "reordered", "full", "fp32", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (50304, 4096, 11008, 32, 32)), num_key_value_heads=None, head_dim=None, rms_norm_eps=1e-5,
             max_position_embeddings=2048, tie_word_embeddings=False, attention_bias=False, hidden_act="silu",
             initializer_range=0.02, rope_theta=10000.0)),
    "gemma3_text": Family(
        "gemma3_text", "Gemma3ForCausalLM", "sandwich", "head", "fp32", 1.0, True, "hidden_activation",
        dict(zip(_SHAPE, (262208, 2304, 9216, 26, 8)), num_key_value_heads=4, head_dim=256, rms_norm_eps=1e-6,
             max_position_embeddings=131072, tie_word_embeddings=True, attention_bias=False,
             hidden_activation="gelu_pytorch_tanh", initializer_range=0.02, rope_theta=1e6,
             rope_local_base_freq=1e4, query_pre_attn_scalar=256, sliding_window=4096, sliding_window_pattern=6,
             final_logit_softcapping=None, attn_logit_softcapping=None, use_bidirectional_attention=False),
        has_query_scalar=True, has_final_softcap=True, per_type_rope=True, sliding="layer_types"),
    "olmo3": Family(  # OLMo 2 plus sliding-window layers (3 of every 4), one RoPE per layer type
        "olmo3", "Olmo3ForCausalLM", "reordered", "full", "fp32", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (50304, 4096, 11008, 32, 32)), num_key_value_heads=None, head_dim=None, rms_norm_eps=1e-5,
             max_position_embeddings=2048, tie_word_embeddings=False, attention_bias=False, hidden_act="silu",
             initializer_range=0.02, rope_theta=5e5, rope_local_base_freq=5e5, sliding_window=4096,
             sliding_window_pattern=4),
        per_type_rope=True, sliding="layer_types"),
    "cohere": Family(  # parallel block, bias-free LayerNorms, per-head QK LayerNorm, interleaved RoPE, logit scale
        "cohere", "CohereForCausalLM", "parallel", "head", "input", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (256000, 8192, 22528, 40, 64)), num_key_value_heads=None, head_dim=None,
             layer_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=True, attention_bias=False,
             hidden_act="silu", initializer_range=0.02, rope_theta=5e5, use_qk_norm=False, logit_scale=0.0625),
        eps_field="layer_norm_eps", read=V.read_cohere, write=V.write_cohere,
        signature=dict(qk_norm=("none", "head"), norm_type=("layernorm",), rope_interleaved=(True,))),
    "stablelm": Family(  # LayerNorms with bias, per-head QK LayerNorm, partial RoPE, optional parallel residual
        "stablelm", "StableLmForCausalLM", "pre", "head", "input", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (50304, 2560, 6912, 32, 32)), num_key_value_heads=32, head_dim=None,
             layer_norm_eps=1e-5, max_position_embeddings=4096, tie_word_embeddings=False, hidden_act="silu",
             initializer_range=0.02, rope_theta=1e4, partial_rotary_factor=0.25, use_qkv_bias=False,
             qk_layernorm=False, use_parallel_residual=False),
        eps_field="layer_norm_eps", bias="use_qkv_bias", prepare=V.prepare_stablelm, read=V.read_stablelm,
        write=V.write_stablelm,
        signature=dict(placement=("pre", "parallel"), qk_norm=("none", "head"), norm_type=("layernorm",))),
    "exaone4": Family(  # OLMo 2's reordered block with per-head QK-norm; RoPE on the sliding layers only
        "exaone4", "Exaone4ForCausalLM", "reordered", "head", "input", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (102400, 4096, 16384, 32, 32)), num_key_value_heads=32, head_dim=None, rms_norm_eps=1e-5,
             max_position_embeddings=2048, tie_word_embeddings=False, hidden_act="silu", initializer_range=0.02,
             rope_theta=1e4, sliding_window=4096, sliding_window_pattern=4),
        sliding="layer_types", bias="none", read=V.read_exaone4, write=V.write_exaone4),
    "hunyuan_v1_dense": Family(  # Qwen3's layout with the QK-norm after RoPE
        "hunyuan_v1_dense", "HunYuanDenseV1ForCausalLM", "pre", "head", "input", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (290943, 4096, 11008, 32, 32)), num_key_value_heads=None, head_dim=None,
             rms_norm_eps=1e-5, max_position_embeddings=2048, tie_word_embeddings=False, attention_bias=False,
             hidden_act="silu", initializer_range=0.02, rope_theta=1e4),
        prepare=V.prepare_hunyuan, read=V.read_hunyuan, signature=dict(qk_norm_after_rope=(True,))),
    "llama4_text": Family(  # weightless RMS QK-norm after RoPE on RoPE layers; NoPE layers with temperature; MoE
        "llama4_text", "Llama4ForCausalLM", "pre", "head", "input", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (202048, 5120, 8192, 48, 40)), intermediate_size_mlp=16384, num_key_value_heads=8,
             head_dim=128, rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=False,
             attention_bias=False, hidden_act="silu", initializer_range=0.02, rope_theta=5e5, use_qk_norm=True,
             no_rope_layer_interval=4, attention_chunk_size=8192, attn_temperature_tuning=True, floor_scale=8192,
             attn_scale=0.1, interleave_moe_layer_step=1, moe_layers=None, num_local_experts=16,
             num_experts_per_tok=1),
        d_ff_field="intermediate_size_mlp", read=V.read_llama4, write=V.write_llama4, moe=None,
        signature=dict(qk_norm=("none", "head"), rope_interleaved=(True,), qk_norm_after_rope=(True, False),
                       moe_router=("softmax", "sigmoid"), moe_shared_expert=(False, True))),
    "olmoe": Family(  # Llama's pre-norm block, OLMo 2's full-width QK-norm, every MLP a mixture of experts
        "olmoe", "OlmoeForCausalLM", "pre", "full", "input", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (50304, 2048, 2048, 16, 16)), num_key_value_heads=None, head_dim=None, rms_norm_eps=1e-5,
             max_position_embeddings=4096, tie_word_embeddings=False, attention_bias=False, hidden_act="silu",
             initializer_range=0.02, rope_theta=1e4, clip_qkv=None, num_experts=64, num_experts_per_tok=8,
             norm_topk_prob=False),
        read=V.read_olmoe, write=V.write_olmoe, moe=True, clip_qkv=True),
    "qwen3_moe": Family(  # Qwen3 with mixture-of-experts MLPs (every decoder_sparse_step-th, not mlp_only_layers)
        "qwen3_moe", "Qwen3MoeForCausalLM", "pre", "head", "input", 0.0, False, "hidden_act",
        dict(zip(_SHAPE, (151936, 2048, 6144, 24, 32)), num_key_value_heads=4, head_dim=None, rms_norm_eps=1e-6,
             max_position_embeddings=32768, tie_word_embeddings=False, attention_bias=False, hidden_act="silu",
             initializer_range=0.02, rope_theta=1e4, use_sliding_window=False, sliding_window=None,
             decoder_sparse_step=1, moe_intermediate_size=768, num_experts_per_tok=8, num_experts=128,
             norm_topk_prob=False, mlp_only_layers=[]),
        sliding="all", prepare=V.prepare_qwen3_moe, read=V.read_qwen3_moe, write=V.write_qwen3_moe, moe=True),
}
