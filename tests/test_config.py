"""Every impossible or inconsistent setting raises ConfigError naming the field and what is allowed."""
import warnings

import pytest
import torch

import qknorm
from qknorm import ConfigError, ModelConfig, TransformerLM, get_config


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("overrides,pattern", [
    (dict(qk_norm="perhead"), r"qk_norm='perhead' is not allowed; choose one of: none, head, full"),
    (dict(placement="middle"), r"placement='middle' .*pre, reordered, sandwich, post"),
    (dict(norm_type="batchnorm"), r"norm_type='batchnorm' .*rmsnorm, layernorm"),
    (dict(norm_cast="fp8"), r"norm_cast='fp8' .*fp32, input"),
    (dict(activation="relu"), r"activation='relu' .*silu, gelu_tanh"),
    (dict(attn_impl="flash3"), r"attn_impl='flash3' .*sdpa, eager"),
    (dict(n_heads=4, n_kv_heads=3), r"n_kv_heads=3 must divide n_heads=4"),
    (dict(d_model=100, n_heads=3, n_kv_heads=3, head_dim=None), r"d_model=100 is not divisible by n_heads=3"),
    (dict(head_dim=33), r"head_dim=33 must be even"),
    (dict(d_model=0), r"d_model=0 must be an integer >= 1"),
    (dict(n_layers=2.5), r"n_layers=2.5 must be an integer"),
    (dict(vocab_size=True), r"vocab_size=True must be an integer"),
    (dict(norm_eps=0.0), r"norm_eps=0.0 must be a positive number"),
    (dict(norm_eps=2.0), r"norm_eps=2.0 is not a small positive number"),
    (dict(rope_theta=-1.0), r"rope_theta=-1.0 must be a positive number"),
    (dict(rope_scaling=float("nan")), r"rope_scaling=nan must be a positive number"),
    (dict(norm_offset=0.5), r"norm_offset=0.5 must be 0.0 .* or 1.0"),
    (dict(norm_type="layernorm", norm_offset=1.0), r"norm_offset=1.0 applies to norm_type='rmsnorm' only"),
    (dict(sliding_window=0), r"sliding_window=0 must be an integer >= 1"),
    (dict(global_every=-1), r"global_every=-1 must be an integer >= 0"),
    (dict(rope_scaling=0.0), r"rope_scaling=0.0 must be a positive number"),
    (dict(rope_scaling="8"), r"rope_scaling='8' must be null, a linear factor, or an object with rope_type"),
    (dict(rope_scaling=dict(rope_type="dynamic", factor=2.0)),
     r"rope_scaling\.rope_type='dynamic' is not allowed; choose one of: linear, llama3, yarn"),
    (dict(rope_scaling=dict(rope_type="llama3", factor=8.0)),
     r"rope_scaling\.original_max_position_embeddings is required for rope_type='llama3'"),
    (dict(rope_scaling=dict(rope_type="linear", factor=8.0, beta_fast=32.0)),
     r"rope_scaling\.beta_fast=32\.0 does not apply to rope_type='linear'"),
    (dict(rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=4.0, high_freq_factor=1.0,
                            original_max_position_embeddings=8192)),
     r"rope_scaling\.high_freq_factor=1\.0 must be at least low_freq_factor=4\.0"),
    (dict(rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=0)),
     r"rope_scaling\.original_max_position_embeddings=0 must be an integer >= 1"),
    (dict(rope_scaling=dict(kind="yarn", factor=4.0)), r"rope_scaling: unknown key 'kind'"),
    (dict(layer_types=("full_attention",)), r"layer_types has 1 entries but n_layers=2"),
    (dict(layer_types=("local", "full_attention")), r"layer_types entry 'local' is not allowed"),
    (dict(layer_types=("sliding_attention", "full_attention")), r"sliding_window is not set"),
    (dict(query_pre_attn_scalar=0), r"query_pre_attn_scalar=0 must be a positive number"),
    (dict(attn_softcap=-5.0), r"attn_softcap=-5.0 must be a positive number"),
    (dict(qk_backend="cuda"), r"qk_backend='cuda' is not allowed; choose one of: None, torch, triton"),
])
def test_bad_settings_name_field_and_allowed_values(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        get_config("llama", "debug", **overrides)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="unknown preset 'gpt5'; choose one of: llama, qwen3, olmo2, gemma3, postln"):
        get_config("gpt5")


def test_unknown_override_names_key():
    with pytest.raises(ConfigError, match="unknown config field 'qk_nrom'"):
        get_config("qwen3", qk_nrom="head")


def test_unknown_field_in_dict():
    with pytest.raises(ConfigError, match="unknown field 'colour'"):
        ModelConfig.from_dict({"colour": 1})


def test_dict_round_trip():
    cfg = get_config("gemma3", "debug")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("preset,warns", [("gemma3", True), ("postln", True), ("olmo2", False), ("qwen3", False)])
def test_fp16_warns_for_sandwich_and_post(preset, warns):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        TransformerLM(get_config(preset, "debug"), dtype=torch.float16)
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert bool([m for m in msgs if "float16" in m]) == warns, msgs


def test_error_names_are_exported():
    assert qknorm.CheckpointError is not None and issubclass(qknorm.CheckpointError, ValueError)
