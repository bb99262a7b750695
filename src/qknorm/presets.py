"""Presets: small functions returning a `ModelConfig`, one per family, each with sizes.

Presets are data (STYLE.md rule 2). Every family has a `debug` size (tiny, CPU-fast, byte-level vocab) and
realistic sizes whose shapes follow the published checkpoints' config.json files:
  llama   Llama 3.2 1B          pre-norm, no QK-norm, SwiGLU, GQA, theta 5e5
  qwen3   Qwen3 0.6B / 1.7B     pre-norm, per-head QK-norm, explicit head_dim 128, theta 1e6
  olmo2   OLMo 2 1B / 7B        reordered norm, full-width QK-norm, weight multiplied in fp32, theta 5e5
          olmo2 372m            the 372M shape of shared/tools/hf_train_gpu.py (the end-to-end speed anchor)
  gemma3  Gemma 3 270M / 1B     sandwich norms with 1+w offsets, per-head QK-norm, 5 local : 1 global,
                                query_pre_attn_scalar 256, sqrt(d) embedding scale, GeGLU(tanh), tied
  postln  GPT-2-small-like      classic post-LN with LayerNorm, no QK-norm (the unstable baseline)
"""
from __future__ import annotations

from typing import Any, Callable, Dict

from .config import ModelConfig
from .errors import ConfigError

_DEBUG = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=256)


def llama(size: str) -> ModelConfig:
    base = dict(placement="pre", qk_norm="none", norm_cast="input", norm_eps=1e-5, rope_theta=5e5, activation="silu")
    shapes = {
        "debug": _DEBUG,
        "1b": dict(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192,
                   max_seq_len=131072, tie_embeddings=True),
        "8b": dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
                   max_seq_len=131072),
    }
    return _build("llama", size, shapes, base)


def qwen3(size: str) -> ModelConfig:
    base = dict(placement="pre", qk_norm="head", norm_cast="input", norm_eps=1e-6, rope_theta=1e6, activation="silu")
    shapes = {
        "debug": dict(_DEBUG, head_dim=32),  # head_dim != d_model / n_heads, as in the real family
        "0.6b": dict(vocab_size=151936, d_model=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128,
                     d_ff=3072, max_seq_len=40960, tie_embeddings=True),
        "1.7b": dict(vocab_size=151936, d_model=2048, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128,
                     d_ff=6144, max_seq_len=40960, tie_embeddings=True),
    }
    return _build("qwen3", size, shapes, base)


def olmo2(size: str) -> ModelConfig:
    base = dict(placement="reordered", qk_norm="full", norm_cast="fp32", norm_eps=1e-6, rope_theta=5e5,
                activation="silu")
    shapes = {
        "debug": _DEBUG,
        "372m": dict(vocab_size=50304, d_model=1024, n_layers=16, n_heads=16, n_kv_heads=16, d_ff=4096,
                     max_seq_len=4096),
        "1b": dict(vocab_size=100352, d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16, d_ff=8192,
                   max_seq_len=4096),
        "7b": dict(vocab_size=100352, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, d_ff=11008,
                   max_seq_len=4096),
    }
    return _build("olmo2", size, shapes, base)


def gemma3(size: str) -> ModelConfig:
    base = dict(placement="sandwich", qk_norm="head", norm_cast="fp32", norm_offset=1.0, norm_eps=1e-6,
                rope_theta=1e6, rope_local_theta=1e4, activation="gelu_tanh", embed_scale=True,
                tie_embeddings=True, global_every=6)
    shapes = {
        # 3 layers with global_every=3 -> sliding, sliding, full; window 16 so T > W is cheap to test
        "debug": dict(_DEBUG, n_layers=3, head_dim=32, global_every=3, sliding_window=16, query_pre_attn_scalar=24),
        "270m": dict(vocab_size=262144, d_model=640, n_layers=18, n_heads=4, n_kv_heads=1, head_dim=256,
                     d_ff=2048, sliding_window=512, query_pre_attn_scalar=256, max_seq_len=32768),
        "1b": dict(vocab_size=262144, d_model=1152, n_layers=26, n_heads=4, n_kv_heads=1, head_dim=256,
                   d_ff=6912, sliding_window=512, query_pre_attn_scalar=256, max_seq_len=32768),
        "4b": dict(vocab_size=262208, d_model=2560, n_layers=34, n_heads=8, n_kv_heads=4, head_dim=256,
                   d_ff=10240, sliding_window=1024, query_pre_attn_scalar=256, rope_scaling=8.0,
                   max_seq_len=131072),
    }
    return _build("gemma3", size, shapes, base)


def postln(size: str) -> ModelConfig:
    base = dict(placement="post", qk_norm="none", norm_type="layernorm", norm_eps=1e-5, rope_theta=1e4,
                activation="silu")
    shapes = {
        "debug": dict(_DEBUG, n_kv_heads=4),
        "124m": dict(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, d_ff=2048, max_seq_len=1024,
                     tie_embeddings=True),
    }
    return _build("postln", size, shapes, base)


PRESETS: Dict[str, Callable[[str], ModelConfig]] = {
    "llama": llama,
    "qwen3": qwen3,
    "olmo2": olmo2,
    "gemma3": gemma3,
    "postln": postln,
}

# sizes per preset, for help texts and tests (kept in sync with the functions above by a test)
SIZES: Dict[str, tuple] = {
    "llama": ("debug", "1b", "8b"),
    "qwen3": ("debug", "0.6b", "1.7b"),
    "olmo2": ("debug", "372m", "1b", "7b"),
    "gemma3": ("debug", "270m", "1b", "4b"),
    "postln": ("debug", "124m"),
}


def get_config(preset: str, size: str = "debug", **overrides: Any) -> ModelConfig:
    """The `ModelConfig` of `preset` at `size`, with `overrides` applied (e.g. qk_norm="head" on any placement)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[preset](size).replace(**overrides) if overrides else PRESETS[preset](size)


def _build(name: str, size: str, shapes: Dict[str, dict], base: dict) -> ModelConfig:
    if size not in shapes:
        raise ConfigError(f"unknown size {size!r} for preset {name!r}; choose one of: {', '.join(shapes)}")
    return ModelConfig(**{**base, **shapes[size]})
