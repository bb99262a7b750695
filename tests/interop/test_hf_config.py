"""config.json translation: transformers' class defaults stay in sync with ours, legacy (transformers 4.x) and
v5 config forms give the same ModelConfig, and what we write is what transformers reads back."""
from __future__ import annotations

import pytest

import qknorm
from qknorm.interop.hf_config import FAMILIES, config_from_hf, hf_config_from_ours, infer_family

transformers = pytest.importorskip("transformers")

_CLASSES = {"llama": "LlamaConfig", "qwen3": "Qwen3Config", "olmo2": "Olmo2Config",
            "gemma3_text": "Gemma3TextConfig"}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_defaults_match_installed_transformers(model_type):
    """A config.json that leaves a field out gets transformers' class default, so ours must be the same."""
    fam = FAMILIES[model_type]
    cls = getattr(transformers, _CLASSES[model_type])
    hf = cls()
    # attributes transformers derives in __post_init__ from other fields or stores elsewhere
    derived = {"rope_theta", "rope_local_base_freq", "sliding_window_pattern", "num_key_value_heads", "head_dim",
               "sliding_window"}
    for field, ours in fam.defaults.items():
        if field not in derived:
            assert getattr(hf, field) == ours, field
    rope = hf.rope_parameters
    if fam.per_type_rope:
        assert rope["full_attention"]["rope_theta"] == fam.defaults["rope_theta"]
        assert rope["sliding_attention"]["rope_theta"] == fam.defaults["rope_local_base_freq"]
        assert hf.sliding_window == fam.defaults["sliding_window"]
    else:
        assert rope["rope_theta"] == fam.defaults["rope_theta"]
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
    assert (a.rope_theta, a.rope_local_theta, a.rope_scaling) == (5e5, 2e4, 8.0)
    assert a.layer_types == ("sliding_attention", "full_attention") * 2
    q_legacy = {"model_type": "qwen3", "rope_theta": 1e6, "rope_scaling": {"type": "linear", "factor": 2.0}}
    q5 = transformers.Qwen3Config(**q_legacy).to_dict()
    assert config_from_hf(q_legacy)[0] == config_from_hf(q5)[0]
    assert config_from_hf(q5)[0].rope_scaling == 2.0
    s_legacy = {"model_type": "qwen3", "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 30}
    s5 = transformers.Qwen3Config(**s_legacy).to_dict()
    assert config_from_hf(s_legacy)[0] == config_from_hf(s5)[0]
    assert config_from_hf(s5)[0].layer_types == ("full_attention",) * 30 + ("sliding_attention",) * 2


@pytest.mark.parametrize("preset", ["llama", "qwen3", "olmo2", "gemma3"])
def test_written_config_reads_back(preset):
    for size in qknorm.SIZES[preset]:
        cfg = qknorm.get_config(preset, size)
        written = hf_config_from_ours(cfg)
        back = config_from_hf(written)[0]
        assert back == cfg.replace(o_proj_bias=cfg.attention_bias, layer_types=back.layer_types,
                                   global_every=back.global_every, sliding_window=back.sliding_window,
                                   query_pre_attn_scalar=back.query_pre_attn_scalar,
                                   rope_local_theta=back.rope_local_theta), (preset, size)
        assert back.resolved_layer_types() == cfg.resolved_layer_types()
        # transformers reads the same numbers from it
        hf = transformers.AutoConfig.for_model(**written)
        assert config_from_hf(hf.to_dict())[0] == back
        assert infer_family(cfg).model_type == written["model_type"]
