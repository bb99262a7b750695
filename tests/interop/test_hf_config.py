"""config.json translation: transformers' class defaults stay in sync with ours, legacy (transformers 4.x) and
v5 config forms give the same ModelConfig, and every preset size written as an HF config reads back exactly,
with transformers building a model of the same parameter count from it."""
from __future__ import annotations

import pytest
import torch

import qknorm
from qknorm import CheckpointError
from qknorm.interop.hf_config import FAMILIES, config_from_hf, hf_config_from_ours, infer_family
from qknorm.rope_scaling import RopeScaling

transformers = pytest.importorskip("transformers")

_CLASSES = {"olmo": "OlmoConfig", "llama": "LlamaConfig", "qwen3": "Qwen3Config", "olmo2": "Olmo2Config",
            "gemma3_text": "Gemma3TextConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
            "olmo3": "Olmo3Config", "cohere": "CohereConfig", "stablelm": "StableLmConfig",
            "exaone4": "Exaone4Config", "hunyuan_v1_dense": "HunYuanDenseV1Config",
            "llama4_text": "Llama4TextConfig", "olmoe": "OlmoeConfig", "qwen3_moe": "Qwen3MoeConfig"}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_defaults_match_installed_transformers(model_type):
    """A config.json that leaves a field out gets transformers' class default, so ours must be the same."""
    fam = FAMILIES[model_type]
    cls = getattr(transformers, _CLASSES[model_type])
    hf = cls()
    # attributes transformers derives in __post_init__ from other fields or stores elsewhere
    derived = {"rope_theta", "rope_local_base_freq", "sliding_window_pattern", "num_key_value_heads", "head_dim",
               "sliding_window", "partial_rotary_factor", "moe_layers"}
    for field, ours in fam.defaults.items():
        if field not in derived:
            assert getattr(hf, field) == ours, field
    rope = hf.rope_parameters
    if fam.per_type_rope:
        assert rope["full_attention"]["rope_theta"] == fam.defaults["rope_theta"]
        assert rope["sliding_attention"]["rope_theta"] == fam.defaults["rope_local_base_freq"]
    else:
        assert rope["rope_theta"] == fam.defaults["rope_theta"]
    if "partial_rotary_factor" in fam.defaults:  # StableLM keeps it in rope_parameters
        assert rope["partial_rotary_factor"] == fam.defaults["partial_rotary_factor"]
    if fam.sliding in ("layer_types", "all"):  # Qwen's class sets it to None unless use_sliding_window
        assert hf.sliding_window == fam.defaults["sliding_window"]
    # and the whole default config translates to the same model transformers would build
    ours = config_from_hf({"model_type": model_type})[0]
    full = config_from_hf(hf.to_dict())[0]
    assert ours == full


def test_legacy_and_v5_rope_forms_agree():
    legacy = {"model_type": "gemma3_text", "num_hidden_layers": 4, "sliding_window_pattern": 2, "rope_theta": 5e5,
              "rope_local_base_freq": 2e4, "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 64}
    v5 = transformers.Gemma3TextConfig(**legacy).to_dict()
    a, b = config_from_hf(legacy)[0], config_from_hf(v5)[0]
    assert a == b
    assert (a.rope_theta, a.rope_local_theta, a.rope_scaling) == (5e5, 2e4, RopeScaling(rope_type="linear", factor=8))
    assert a.resolved_layer_types() == ("sliding_attention", "full_attention") * 2 and a.global_every == 2
    q_legacy = {"model_type": "qwen3", "rope_theta": 1e6, "rope_scaling": {"type": "linear", "factor": 2.0}}
    q5 = transformers.Qwen3Config(**q_legacy).to_dict()
    assert config_from_hf(q_legacy)[0] == config_from_hf(q5)[0]
    assert config_from_hf(q5)[0].rope_scaling == RopeScaling(rope_type="linear", factor=2.0)
    s_legacy = {"model_type": "qwen3", "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 30}
    s5 = transformers.Qwen3Config(**s_legacy).to_dict()
    assert config_from_hf(s_legacy)[0] == config_from_hf(s5)[0]
    assert config_from_hf(s5)[0].layer_types == ("full_attention",) * 30 + ("sliding_attention",) * 2
    # Llama 3.1 style: llama3 scaling without original_max_position_embeddings takes max_position_embeddings
    l_legacy = {"model_type": "llama", "max_position_embeddings": 4096, "rope_theta": 5e5,
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}}
    l5 = transformers.LlamaConfig(**l_legacy).to_dict()
    assert config_from_hf(l_legacy)[0] == config_from_hf(l5)[0]
    assert config_from_hf(l5)[0].rope_scaling.original_max_position_embeddings == 4096


def test_yarn_attention_factor_from_mscale_and_null_factor():
    """DeepSeek-style mscale/mscale_all_dim give the attention factor; a null factor is max_pos / original."""
    cfg = {"model_type": "qwen3", "max_position_embeddings": 8192,
           "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": None, "mscale": 0.707,
                               "mscale_all_dim": 0.707, "original_max_position_embeddings": 2048}}
    s = config_from_hf(cfg)[0].rope_scaling
    assert s.factor == 4.0 and s.attention_factor == 1.0 and s.attention_scaling == 1.0


@pytest.mark.parametrize("preset,size", [(p, s) for p in ("llama", "qwen3", "olmo2", "gemma3", "mistral", "qwen2")
                                         for s in qknorm.SIZES[p]])
def test_every_preset_size_reads_back_exactly(preset, size):
    """to_hf's config writer, then from_hf's reader, gives back the preset's config, field for field; transformers
    reads the same numbers and builds (on the meta device) a model with our parameter count."""
    cfg = qknorm.get_config(preset, size)
    written = hf_config_from_ours(cfg)
    assert config_from_hf(written)[0] == cfg
    assert infer_family(cfg).model_type == written["model_type"]
    hf_cfg = transformers.AutoConfig.for_model(**written)
    assert config_from_hf(hf_cfg.to_dict())[0] == cfg
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    n_hf = sum(p.numel() for name, p in hf.named_parameters())
    assert n_hf == cfg.num_params(), (preset, size)


def test_published_rope_numerics_of_the_realistic_sizes():
    """Llama 3.2 1B / 3.1 8B carry Meta's llama3 RoPE scaling; Gemma 3 4B scales its global RoPE by 8."""
    l1, l8 = qknorm.get_config("llama", "1b"), qknorm.get_config("llama", "8b")
    want = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    assert l1.rope_scaling == RopeScaling(factor=32.0, **want) and l8.rope_scaling == RopeScaling(factor=8.0, **want)
    assert (l1.rope_theta, l1.max_seq_len, l1.tie_embeddings) == (5e5, 131072, True)
    assert (l8.rope_theta, l8.max_seq_len, l8.tie_embeddings) == (5e5, 131072, False)
    g4 = qknorm.get_config("gemma3", "4b")
    assert g4.rope_scaling == RopeScaling(rope_type="linear", factor=8.0) and g4.local_rope == (1e4, None)
    m = qknorm.get_config("mistral", "7b")
    assert m.resolved_layer_types() == ("sliding_attention",) * 32 and m.sliding_window == 4096
    q2 = qknorm.get_config("qwen2", "0.5b")
    assert q2.attention_bias and not q2.o_proj_bias and q2.qk_norm.value == "none"
