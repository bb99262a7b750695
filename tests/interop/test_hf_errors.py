"""Errors a user can act on: CheckpointError naming the file/key and what is wrong; ConfigError for exports
transformers cannot represent; never a silently wrong model."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import qknorm
from qknorm import CheckpointError, ConfigError

from helpers.hf_models import make_hf


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen3")
    make_hf("qwen3").save_pretrained(d)
    return d


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_weights(d, fn):
    state = load_file(str(d / "model.safetensors"))
    fn(state)
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def test_missing_key(qwen_dir, tmp_path):
    d = _copy(qwen_dir, tmp_path / "m")
    _edit_weights(d, lambda s: s.pop("model.layers.1.self_attn.k_norm.weight"))
    with pytest.raises(CheckpointError, match=r"missing key 'model\.layers\.1\.self_attn\.k_norm\.weight'"):
        qknorm.from_hf(d)


def test_extra_key(qwen_dir, tmp_path):
    d = _copy(qwen_dir, tmp_path / "m")
    _edit_weights(d, lambda s: s.update({"model.layers.0.mlp.extra_proj.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected key 'model\.layers\.0\.mlp\.extra_proj\.weight'"):
        qknorm.from_hf(d)


def test_layer_beyond_config_is_an_extra_key(qwen_dir, tmp_path):
    d = _copy(qwen_dir, tmp_path / "m")
    _edit_config(d, num_hidden_layers=1, layer_types=None)
    with pytest.raises(CheckpointError, match=r"unexpected key 'model\.layers\.1\."):
        qknorm.from_hf(d)


def test_wrong_shape_names_key_and_both_shapes(qwen_dir, tmp_path):
    d = _copy(qwen_dir, tmp_path / "m")
    _edit_weights(d, lambda s: s.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(16)}))
    with pytest.raises(CheckpointError) as e:
        qknorm.from_hf(d)
    msg = str(e.value)
    assert "'model.layers.0.self_attn.q_norm.weight'" in msg and "(16,)" in msg and "(24,)" in msg
    assert str(d) in msg


def test_config_shape_mismatch_names_both_shapes(qwen_dir, tmp_path):
    d = _copy(qwen_dir, tmp_path / "m")
    _edit_config(d, intermediate_size=100)
    with pytest.raises(CheckpointError, match=r"gate_proj\.weight' has shape \(96, 64\) but the config implies "
                                               r"\(100, 64\)"):
        qknorm.from_hf(d)


@pytest.mark.parametrize("model_type", ["phi3", None])
def test_unsupported_or_missing_model_type(qwen_dir, tmp_path, model_type):
    d = _copy(qwen_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = model_type
    if model_type is None:
        del cfg["model_type"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type" + (" 'phi3' is not supported" if model_type else "")):
        qknorm.from_hf(d)


def test_corrupted_safetensors(qwen_dir, tmp_path):
    d = _copy(qwen_dir, tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or truncated"):
        qknorm.from_hf(d)


def test_broken_config_json_and_missing_weights(qwen_dir, tmp_path):
    d = _copy(qwen_dir, tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not readable JSON"):
        qknorm.from_hf(d)
    d2 = _copy(qwen_dir, tmp_path / "n")
    (d2 / "model.safetensors").rename(d2 / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"only PyTorch \.bin/\.pt weights"):
        qknorm.from_hf(d2)
    with pytest.raises(CheckpointError, match="not a directory"):
        qknorm.from_hf(tmp_path / "nowhere")


def test_shard_missing_from_index(tmp_path):
    make_hf("llama").save_pretrained(tmp_path, max_shard_size="60KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name}: file not found"):
        qknorm.from_hf(tmp_path)


@pytest.mark.parametrize("field,params", [
    ("rope_parameters", {"rope_type": "proportional", "factor": 4.0, "rope_theta": 1e4}),
    ("rope_parameters", {"rope_type": "dynamic", "factor": 2.0}),
    ("rope_scaling", {"type": "longrope", "factor": 2.0}),
])
def test_unsupported_rope_type_names_field_and_value(qwen_dir, tmp_path, field, params):
    d = _copy(qwen_dir, tmp_path / "m")
    _edit_config(d, **{field: params})
    with pytest.raises(CheckpointError, match=rf"{field}\.rope_type='{params.get('rope_type', params.get('type'))}' "
                                              "is not supported"):
        qknorm.from_hf(d)


@pytest.mark.parametrize("changes,match", [
    (dict(hidden_act="relu"), r"hidden_act='relu' is not supported"),
    (dict(use_sliding_window=False, layer_types=["full_attention", "sliding_attention"]), "sliding_window is not set"),
    (dict(rope_scaling=None, rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0,
                                              "high_freq_factor": 4.0}),
     r"rope_parameters\.low_freq_factor is missing \(rope_type 'llama3' needs it\)"),
    (dict(rope_scaling=None, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}),
     r"rope_parameters\.factor is missing \(rope_type 'yarn' needs it\)"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}),
     r"rope_scaling: rope_scaling\.high_freq_factor=1\.0 must be at least low_freq_factor=4\.0"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
     "partial_rotary_factor=0.5"),
])
def test_unsupported_config_features(qwen_dir, tmp_path, changes, match):
    d = _copy(qwen_dir, tmp_path / "m")
    _edit_config(d, **changes)
    with pytest.raises(CheckpointError, match=match):
        qknorm.from_hf(d)


def test_double_folded_gemma_offsets(tmp_path):
    hf = make_hf("gemma3")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.05 * torch.randn_like(p))  # what a fold of small offsets into 1 + w looks like
    hf.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="look already folded"):
        qknorm.from_hf(tmp_path)
    with pytest.raises(CheckpointError, match="allow_folded=True"):
        qknorm.from_hf(hf)
    ours = qknorm.from_hf(tmp_path, allow_folded=True)  # the override loads it as stored
    assert torch.equal(ours.norm.weight, hf.model.norm.weight)


def test_zero_init_gemma_is_not_flagged():
    import transformers

    cfg = transformers.Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    ours = qknorm.from_hf(transformers.Gemma3ForCausalLM(cfg))  # all offsets exactly 0: scale 1
    assert float(ours.norm.weight.detach().abs().max()) == 0.0


def test_tied_config_with_different_head(qwen_dir, tmp_path):
    d = _copy(qwen_dir, tmp_path / "m")
    _edit_config(d, tie_word_embeddings=True)
    with pytest.raises(CheckpointError, match="tie_word_embeddings is true but 'lm_head.weight' differs"):
        qknorm.from_hf(d)


def test_to_hf_postln_not_representable(tmp_path):
    with pytest.raises(ConfigError, match=r"placement='post' with qk_norm='none' is not representable"):
        qknorm.to_hf(qknorm.TransformerLM(qknorm.get_config("postln")), tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("preset,overrides,match", [
    # reordered + per-head QK-norm is EXAONE 4's layout, whose norms round before the gain (norm_cast input)
    ("olmo2", dict(qk_norm="head"), r"not representable as transformers exaone4: norm_cast='fp32'"),
    ("olmo2", dict(qk_norm_after_rope=True), r"placement='reordered' with qk_norm='full' is not representable"),
    ("qwen3", dict(norm_cast="fp32"), r"norm_cast='fp32' \(qwen3 uses 'input'\)"),
    ("llama", dict(attn_softcap=30.0, final_softcap=10.0), r"attn_softcap=30\.0.*final_softcap=10\.0"),
    ("llama", dict(o_proj_bias=True), r"o_proj_bias=True \(transformers' attention_bias puts a bias on q, k, v"),
    ("mistral", dict(attention_bias=True, o_proj_bias=True), r"attention_bias=True \(mistral has no attention"),
    ("mistral", dict(global_every=2), r"global_every=2 \(mistral's window applies to every layer or to none\)"),
    ("qwen3", dict(sliding_window=8, global_every=2, rope_scaling=4.0, rope_local_theta=1e4),
     r"rope_local_theta=10000\.0 \(qwen3 uses one RoPE \(theta and scaling\) for every layer\)"),
    ("qwen3", dict(query_pre_attn_scalar=10), r"query_pre_attn_scalar=10"),
    ("gemma3", dict(embed_scale=False), r"embed_scale=False"),
    # a pre-norm LayerNorm model is StableLM's layout, whose LayerNorms have biases
    ("llama", dict(norm_type="layernorm", layernorm_bias=False), r"stablelm: layernorm_bias=False \(transformers "
                                                                  r"stablelm gives True\)"),
    ("qwen3", dict(qk_norm_gain="per_head"), r"hunyuan|qwen3"),
    ("llama", dict(nope_layers=(1,)), r"nope_layers=\(1,\) \(transformers llama gives \(\)\)"),
    ("qwen3", dict(qk_norm_type="l2"), r"qk_norm_type='l2' \(qwen3's QK-norm, if any, is an RMSNorm\)"),
    ("olmo2", dict(qk_norm_type="layernorm"), r"qk_norm_type='layernorm'"),
    ("llama", dict(sigma_reparam=True), r"sigma_reparam=True \(transformers has no sigmaReparam linears\)"),
])
def test_to_hf_unrepresentable_names_fields(tmp_path, preset, overrides, match):
    model = qknorm.TransformerLM(qknorm.get_config(preset, **overrides))
    with pytest.raises(ConfigError, match=match):
        qknorm.to_hf(model, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_to_hf_refuses_to_overwrite(tmp_path):
    model = qknorm.TransformerLM(qknorm.get_config("llama"))
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        qknorm.to_hf(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    qknorm.to_hf(model, tmp_path, overwrite=True)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "keep.txt").is_file()


def test_from_hf_rejects_other_objects():
    with pytest.raises(TypeError, match="HF model or a directory"):
        qknorm.from_hf(42)
