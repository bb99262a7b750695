"""Presets: data. Each family is its numerics (`base`) plus a table of sizes; a config is built from scratch as
base + the size's fields + the user's overrides, so whatever neither the size table nor the user set is derived
from the final values (config.py: head_dim = d_model // n_heads, n_kv_heads = n_heads, ...).

Every family has a `debug` size (tiny, CPU-fast, byte-level vocab). The realistic sizes carry the published
numerics of the checkpoints named beside them: every number comes from that model's config.json on the Hugging
Face Hub (repo named in the comment); a test writes each size's HF config and reads it back unchanged.
  llama    pre-norm, no QK-norm, SwiGLU, GQA, Llama 3.1 RoPE scaling ("llama3")
  qwen3    pre-norm, per-head QK-norm, explicit head_dim 128
  olmo2    reordered norms, full-width QK-norm, weight multiplied in fp32
  gemma3   sandwich norms with 1+w offsets, per-head QK-norm, 5 local : 1 global, query_pre_attn_scalar,
           sqrt(d) embedding scale, GeGLU(tanh), tied head, local/global RoPE (linear scaling on global, 4B)
  mistral  pre-norm, no QK-norm, sliding window on every layer
  qwen2    pre-norm, no QK-norm, bias on q/k/v (not o): the family people retrofit QK-norm into
  postln   classic post-LN with LayerNorm, no QK-norm (the unstable baseline; GPT-2-small-like, not a checkpoint)
and, read from the published configs bundled in the catalogue (presets_families.py): olmo, olmo3, cohere,
stablelm, exaone4, hunyuan, llama4, olmoe, qwen3_moe.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Union

from .config import ModelConfig, check_field_names
from .errors import ConfigError
from .presets_families import FAMILY_PRESETS, FamilyPreset

_DEBUG = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=256)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A family: its numerics and its sizes. `preset(size, **overrides)` builds the ModelConfig."""

    name: str
    base: Mapping[str, Any]
    sizes: Mapping[str, Mapping[str, Any]]

    def fields(self, size: str = "debug") -> Dict[str, Any]:
        """The explicit fields of `size`: base, then the size table (a size may override the base)."""
        if size not in self.sizes:
            raise ConfigError(f"unknown size {size!r} for preset {self.name!r}; choose one of: {', '.join(self.sizes)}")
        return {**self.base, **self.sizes[size]}

    def __call__(self, size: str = "debug", **overrides: Any) -> ModelConfig:
        check_field_names(overrides)
        return ModelConfig(**{**self.fields(size), **overrides})


# Llama 3.2 1B / Llama 3.1 8B: rope_scaling {"rope_type": "llama3", "factor": 32 / 8, "low_freq_factor": 1,
# "high_freq_factor": 4, "original_max_position_embeddings": 8192}, rope_theta 500000, rms_norm_eps 1e-5
def _llama3_rope(factor: float) -> Dict[str, Any]:
    return dict(rope_type="llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192)


LLAMA = Preset("llama", dict(placement="pre", qk_norm="none", norm_cast="input", norm_eps=1e-5, rope_theta=5e5,
                             activation="silu"), {
    "debug": _DEBUG,
    # meta-llama/Llama-3.2-1B
    "1b": dict(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64, d_ff=8192,
               max_seq_len=131072, tie_embeddings=True, rope_scaling=_llama3_rope(32.0)),
    # meta-llama/Llama-3.1-8B
    "8b": dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
               max_seq_len=131072, rope_scaling=_llama3_rope(8.0)),
})

# Qwen/Qwen3-0.6B, Qwen/Qwen3-1.7B: rope_theta 1000000, rms_norm_eps 1e-6, head_dim 128, tied, no sliding window
QWEN3 = Preset("qwen3", dict(placement="pre", qk_norm="head", norm_cast="input", norm_eps=1e-6, rope_theta=1e6,
                             activation="silu"), {
    "debug": dict(_DEBUG, head_dim=32),  # head_dim != d_model / n_heads, as in the real family
    "0.6b": dict(vocab_size=151936, d_model=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128, d_ff=3072,
                 max_seq_len=40960, tie_embeddings=True),
    "1.7b": dict(vocab_size=151936, d_model=2048, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128, d_ff=6144,
                 max_seq_len=40960, tie_embeddings=True),
})

# allenai/OLMo-2-0425-1B, allenai/OLMo-2-1124-7B: rope_theta 500000, rms_norm_eps 1e-6, max_position_embeddings 4096
OLMO2 = Preset("olmo2", dict(placement="reordered", qk_norm="full", norm_cast="fp32", norm_eps=1e-6, rope_theta=5e5,
                             activation="silu"), {
    "debug": _DEBUG,
    # not a published checkpoint: the 372M OLMo 2 shape the training-step benchmark compares against HF's
    "372m": dict(vocab_size=50304, d_model=1024, n_layers=16, n_heads=16, n_kv_heads=16, d_ff=4096,
                 max_seq_len=4096),
    "1b": dict(vocab_size=100352, d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16, d_ff=8192,
               max_seq_len=4096),
    "7b": dict(vocab_size=100352, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, d_ff=11008,
               max_seq_len=4096),
})

# google/gemma-3-270m, google/gemma-3-1b-pt, google/gemma-3-4b-pt (its text_config): rope_theta 1000000 on global
# layers, rope_local_base_freq 10000 on local ones, sliding_window_pattern 6, query_pre_attn_scalar 256,
# rms_norm_eps 1e-6, head_dim 256, tied; the 4B scales global RoPE linearly by 8
GEMMA3 = Preset("gemma3", dict(placement="sandwich", qk_norm="head", norm_cast="fp32", norm_offset=1.0,
                               norm_eps=1e-6, rope_theta=1e6, rope_local_theta=1e4, activation="gelu_tanh",
                               embed_scale=True, tie_embeddings=True, global_every=6), {
    # 3 layers with global_every=3 -> sliding, sliding, full; window 16 so T > W is cheap to test
    "debug": dict(_DEBUG, n_layers=3, head_dim=32, global_every=3, sliding_window=16, query_pre_attn_scalar=24),
    "270m": dict(vocab_size=262144, d_model=640, n_layers=18, n_heads=4, n_kv_heads=1, head_dim=256, d_ff=2048,
                 sliding_window=512, query_pre_attn_scalar=256, max_seq_len=32768),
    "1b": dict(vocab_size=262144, d_model=1152, n_layers=26, n_heads=4, n_kv_heads=1, head_dim=256, d_ff=6912,
               sliding_window=512, query_pre_attn_scalar=256, max_seq_len=32768),
    "4b": dict(vocab_size=262208, d_model=2560, n_layers=34, n_heads=8, n_kv_heads=4, head_dim=256, d_ff=10240,
               sliding_window=1024, query_pre_attn_scalar=256, max_seq_len=131072,
               rope_scaling=dict(rope_type="linear", factor=8.0)),
})

# mistralai/Mistral-7B-v0.1: sliding_window 4096 (every layer), rope_theta 10000, rms_norm_eps 1e-5
MISTRAL = Preset("mistral", dict(placement="pre", qk_norm="none", norm_cast="input", norm_eps=1e-5, rope_theta=1e4,
                                 activation="silu", global_every=0), {
    "debug": dict(_DEBUG, sliding_window=16),  # window 16 so T > W is cheap to test
    "7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
               max_seq_len=32768, sliding_window=4096),
})

# Qwen/Qwen2.5-0.5B: rope_theta 1000000, rms_norm_eps 1e-6, use_sliding_window false, tied
QWEN2 = Preset("qwen2", dict(placement="pre", qk_norm="none", norm_cast="input", norm_eps=1e-6, rope_theta=1e6,
                             activation="silu", attention_bias=True, o_proj_bias=False), {
    "debug": _DEBUG,
    "0.5b": dict(vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2, d_ff=4864,
                 max_seq_len=32768, tie_embeddings=True),
})

POSTLN = Preset("postln", dict(placement="post", qk_norm="none", norm_type="layernorm", norm_eps=1e-5,
                               rope_theta=1e4, activation="silu"), {
    "debug": dict(_DEBUG, n_kv_heads=4),
    "124m": dict(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, d_ff=2048, max_seq_len=1024,
                 tie_embeddings=True),
})

PRESETS: Dict[str, Union[Preset, FamilyPreset]] = {p.name: p for p in (LLAMA, QWEN3, OLMO2, GEMMA3, POSTLN, MISTRAL,
                                                                         QWEN2)}
PRESETS.update(FAMILY_PRESETS)  # the other QK-norm families, from their bundled published configs

# sizes per preset, for help texts and tests
SIZES: Dict[str, tuple] = {name: tuple(p.sizes) for name, p in PRESETS.items()}


def get_config(preset: str, size: str = "debug", **overrides: Any) -> ModelConfig:
    """The `ModelConfig` of `preset` at `size` with `overrides` (e.g. qk_norm="head" on any placement), built
    from scratch: fields neither the size table nor `overrides` set are derived from the final values."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[preset](size, **overrides)


def preset_fields(preset: str, size: str = "debug") -> Dict[str, Any]:
    """The fields `preset` at `size` sets explicitly (everything else is a default or derived)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[preset].fields(size)
