"""Tiny random HF models of every family, built offline, with weights moved away from their init.

Not only defaults: GQA/MQA, head_dim != hidden/heads, non-default eps and theta, every supported RoPE variant
with published parameters (Llama 3.2's llama3 scaling, Qwen3's YaRN recipe; linear; YaRN on Gemma 3's global
layers only and on a Qwen2 with sliding layers), windows shorter than the sequence (Gemma 3 mixed layer types,
Qwen's upper layers, Mistral's every layer), query_pre_attn_scalar != head_dim, attention biases (Qwen2's q/k/v
only), tied and untied heads. Every norm weight and bias is randomized, so a wrong offset, cast or key shows.
"""
from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*eos_token_id.*")

VOCAB, T = 128, 32
_BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=256)

LLAMA32_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}  # meta-llama/Llama-3.2-1B config.json
QWEN3_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}  # Qwen3 model cards

# name -> (config class, causal-LM class, kwargs)
VARIANTS = {
    "llama32_rope": ("LlamaConfig", "LlamaForCausalLM",
                     dict(num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5, rope_theta=5e5,
                          tie_word_embeddings=True, max_position_embeddings=131072, rope_scaling=LLAMA32_ROPE)),
    "qwen3_yarn": ("Qwen3Config", "Qwen3ForCausalLM",
                   dict(num_key_value_heads=2, head_dim=32, rope_theta=1e6, max_position_embeddings=131072,
                        rope_scaling=QWEN3_YARN)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, sliding_window=8, rope_theta=1e6)),
    "mistral_no_window": ("MistralConfig", "MistralForCausalLM",
                          dict(num_key_value_heads=1, head_dim=24, sliding_window=None, tie_word_embeddings=True,
                               rms_norm_eps=1e-5)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2_sliding_yarn": ("Qwen2Config", "Qwen2ForCausalLM",
                           dict(num_hidden_layers=3, num_key_value_heads=1, use_sliding_window=True, sliding_window=8,
                                max_window_layers=1, rope_scaling={"rope_type": "yarn", "factor": 2.0,
                                                                   "original_max_position_embeddings": 16,
                                                                   "beta_fast": 8.0, "beta_slow": 2.0})),
    "gemma3_yarn": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                    dict(num_hidden_layers=3, num_key_value_heads=2, head_dim=16, sliding_window=8,
                         sliding_window_pattern=3, query_pre_attn_scalar=16,
                         rope_parameters={"full_attention": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 8.0,
                                                             "original_max_position_embeddings": 16},
                                          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-5, rope_theta=5e4, attention_bias=True,
                   rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=1, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              dict(num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-5, rope_theta=5e4, attention_bias=True,
                   rope_scaling={"rope_type": "linear", "factor": 3.0})),
    "qwen3_tied_sliding": ("Qwen3Config", "Qwen3ForCausalLM",
                           dict(num_hidden_layers=3, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
                                use_sliding_window=True, sliding_window=8, max_window_layers=1, rope_theta=2e4)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM",
              dict(num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=5e5, attention_bias=True,
                   rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "olmo2_tied": ("Olmo2Config", "Olmo2ForCausalLM", dict(head_dim=24, tie_word_embeddings=True)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(num_hidden_layers=3, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention"], sliding_window=8,
                    rope_theta=5e5, rope_local_base_freq=2e4, rope_scaling={"rope_type": "linear", "factor": 4.0},
                    query_pre_attn_scalar=20, final_logit_softcapping=30.0)),
    "gemma3_untied_bias": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                           dict(num_key_value_heads=1, head_dim=16, tie_word_embeddings=False, attention_bias=True,
                                sliding_window=6, sliding_window_pattern=2, query_pre_attn_scalar=16,
                                hidden_activation="gelu_pytorch_tanh")),
    # the families whose QK-norm or RoPE is a variant (config_variants.py), each with windows/chunks shorter than T
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM",
              dict(num_hidden_layers=4, num_key_value_heads=2, sliding_window=8, attention_bias=True,
                   rope_parameters={"full_attention": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0,
                                                       "original_max_position_embeddings": 16},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}})),
    "cohere": ("CohereConfig", "CohereForCausalLM",
               dict(num_key_value_heads=2, use_qk_norm=True, logit_scale=0.25, layer_norm_eps=1e-5, rope_theta=2e4)),
    "cohere_no_qk_untied": ("CohereConfig", "CohereForCausalLM",
                            dict(num_key_value_heads=1, tie_word_embeddings=False, attention_bias=True)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM",
                 dict(num_key_value_heads=2, qk_layernorm=True, use_qkv_bias=True, partial_rotary_factor=0.25)),
    "stablelm_parallel": ("StableLmConfig", "StableLmForCausalLM",
                          dict(num_key_value_heads=4, qk_layernorm=True, use_parallel_residual=True,
                               partial_rotary_factor=0.5, tie_word_embeddings=True)),
    "exaone4": ("Exaone4Config", "Exaone4ForCausalLM",
                dict(num_hidden_layers=4, num_key_value_heads=2, head_dim=24, sliding_window=8,
                     sliding_window_pattern=2, rope_theta=5e4)),
    "hunyuan_v1_dense": ("HunYuanDenseV1Config", "HunYuanDenseV1ForCausalLM",
                         dict(num_key_value_heads=2, head_dim=16, attention_bias=True,
                              rope_scaling={"type": "dynamic", "alpha": 1000.0, "factor": 1.0})),
    "llama4_text": ("Llama4TextConfig", "Llama4ForCausalLM",
                    dict(num_hidden_layers=4, num_key_value_heads=2, head_dim=16, intermediate_size_mlp=80,
                         moe_layers=[], no_rope_layers=[1, 0, 1, 0], attention_chunk_size=8, floor_scale=4,
                         attn_scale=0.3)),
    # OLMo 1: non-parametric LayerNorms; clip_qkv below the projections' spread, so the clamp acts on ~half of
    # q, k and v (test_hf_clip_qkv.py asserts it)
    "olmo": ("OlmoConfig", "OlmoForCausalLM",
             dict(num_key_value_heads=2, clip_qkv=0.5, attention_bias=True, rope_theta=5e4)),
    "olmo_tied": ("OlmoConfig", "OlmoForCausalLM", dict(num_key_value_heads=1, tie_word_embeddings=True)),
    # Llama 4's MoE layers: sigmoid router on the inputs + a shared expert; every 2nd layer top-1 of 3, or
    # explicit moe_layers top-2 of 4 (not periodic: dense_layers)
    "llama4_text_moe": ("Llama4TextConfig", "Llama4ForCausalLM",
                        dict(num_hidden_layers=4, num_key_value_heads=2, head_dim=16, intermediate_size_mlp=80,
                             intermediate_size=40, num_local_experts=3, num_experts_per_tok=1,
                             interleave_moe_layer_step=2, no_rope_layers=[1, 0, 1, 0], attention_chunk_size=8,
                             floor_scale=4, attn_scale=0.3)),
    "llama4_text_moe_top2": ("Llama4TextConfig", "Llama4ForCausalLM",
                             dict(num_hidden_layers=4, num_key_value_heads=1, head_dim=16, intermediate_size_mlp=48,
                                  intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
                                  moe_layers=[0, 1, 3], attention_chunk_size=8, tie_word_embeddings=True)),
    # mixture-of-experts families (nn/moe.py): top-2 of 4 experts, more tokens than experts so each is used
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM",
              dict(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, intermediate_size=40, rope_theta=5e5)),
    "olmoe_topk_norm_bias": ("OlmoeConfig", "OlmoeForCausalLM",
                             dict(num_experts=5, num_experts_per_tok=3, norm_topk_prob=True, attention_bias=True,
                                  tie_word_embeddings=True, rms_norm_eps=1e-6)),
    "olmoe_clip": ("OlmoeConfig", "OlmoeForCausalLM",  # clamped after the QK-norm: |q| ~ the gains ~ 1
                   dict(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, intermediate_size=40,
                        clip_qkv=0.8)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(num_hidden_layers=4, num_key_value_heads=2, head_dim=24, num_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=40, norm_topk_prob=True, mlp_only_layers=[2], rope_theta=2e4)),
    "qwen3_moe_sliding": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                          dict(num_hidden_layers=4, num_key_value_heads=1, num_experts=3, num_experts_per_tok=1,
                               moe_intermediate_size=32, decoder_sparse_step=2, use_sliding_window=True,
                               sliding_window=8, attention_bias=True)),
}


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every norm weight and bias away from its init; keep matrices as initialized (std 0.02) but bigger."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if p.ndim == 1:  # norms (offsets for Gemma) and biases
            p.add_(0.3 * noise.to(p.dtype))
        else:
            p.copy_((0.08 * noise).to(p.dtype))
    return model


def make_hf(name: str, *, attn: str = "eager", seed: int = 0, dtype=torch.float32):
    cfg_cls, model_cls, kw = VARIANTS[name]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**{**_BASE, **kw})
    cfg._attn_implementation = attn
    model = getattr(transformers, model_cls)(cfg)
    randomize(model, seed)
    return model.to(dtype).eval()


def make_gemma3_multimodal(seed: int = 0):
    torch.manual_seed(seed)
    text = {**_BASE, **VARIANTS["gemma3"][2]}
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    cfg._attn_implementation = "eager"
    return randomize(transformers.Gemma3ForConditionalGeneration(cfg), seed).eval()


def input_ids(batch: int = 2, length: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())
