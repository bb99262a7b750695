"""Round trips through transformers: HF -> ours -> HF (identical weights and logits), a model trained here
-> to_hf -> AutoModelForCausalLM.from_pretrained (same logits), and loading saved directories (single file and
sharded) without transformers in the loading code path."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

import qknorm
from qknorm.interop.divergence import compare_with_hf
from qknorm.interop.hf_keys import normalize_hf_keys

from helpers.hf_models import VOCAB, input_ids, make_gemma3_multimodal, make_hf, rel_err

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

transformers = pytest.importorskip("transformers")


def test_hf_to_ours_to_hf_identical(variant, tmp_path):
    hf = make_hf(variant)
    ours = qknorm.from_hf(hf)
    qknorm.to_hf(ours, tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    # as save_pretrained writes them: transformers 5's fused experts per expert (test_hf_moe.py checks that form)
    want = {k: v for k, v in normalize_hf_keys(hf.state_dict()).items()
            if not (k == "lm_head.weight" and hf.config.tie_word_embeddings)}
    assert sorted(saved) == sorted(want)
    for k, v in want.items():
        assert torch.equal(saved[k], v), k
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(back) is type(hf)
    ids = input_ids()
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, hf(input_ids=ids).logits)
    # and the re-read config is the same ModelConfig
    assert qknorm.from_hf(tmp_path).config == ours.config


def _train_a_little(model: torch.nn.Module, steps: int = 3) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    for step in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(step))
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


_LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
               original_max_position_embeddings=32)  # a short original context, so T=40 is past it


@pytest.mark.parametrize("preset,overrides", [
    ("llama", dict(tie_embeddings=True, rope_scaling=_LLAMA3)),
    ("mistral", dict(rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16))),
    ("qwen2", dict(head_dim=32, sliding_window=8, layer_types=("full_attention", "sliding_attention"))),
    ("qwen3", dict(attention_bias=True, o_proj_bias=True, rope_scaling=2.0)),
    ("olmo2", dict(head_dim=24, norm_eps=1e-5)),
    ("gemma3", dict(tie_embeddings=False, final_softcap=15.0, rope_scaling=8.0)),
])
def test_trained_model_exports_with_same_logits(preset, overrides, tmp_path):
    torch.manual_seed(0)
    ours = qknorm.TransformerLM(qknorm.get_config(preset, "debug", vocab_size=VOCAB, **overrides))
    _train_a_little(ours)
    norms = [p for n, p in ours.named_parameters() if p.ndim == 1]
    assert all(not torch.equal(p, torch.zeros_like(p)) and not torch.equal(p, torch.ones_like(p)) for p in norms)
    qknorm.to_hf(ours, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    report = compare_with_hf(ours, hf, input_ids(length=40))  # longer than the debug windows (16)
    assert report.ok, f"{preset}:\n{report}"
    assert type(hf).__name__.lower().startswith(preset)  # the family follows from the numerics
    assert qknorm.from_hf(tmp_path).config == ours.config


def test_sharded_directory_loads_without_transformers(tmp_path):
    hf = make_hf("gemma3")
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    ours = qknorm.from_hf(tmp_path)
    with torch.no_grad():
        assert rel_err(ours(input_ids()), hf(input_ids=input_ids()).logits) < 1e-5


def test_directory_loading_never_imports_transformers(tmp_path, monkeypatch):
    make_hf("olmo2").save_pretrained(tmp_path, max_shard_size="60KB")
    for mod in [m for m in sys.modules if m.split(".")[0] == "transformers"]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "transformers", None)  # any import of it now raises ImportError
    ours = qknorm.from_hf(tmp_path)
    assert ours(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, VOCAB)


@pytest.mark.parametrize("name", ["qwen3", "olmo2_tied"])
def test_single_file_directory_matches_object(name, tmp_path):
    hf = make_hf(name)
    hf.save_pretrained(tmp_path)
    from_dir, from_obj = qknorm.from_hf(str(tmp_path)), qknorm.from_hf(hf)
    assert from_dir.config == from_obj.config
    for (k, a), (_, b) in zip(from_dir.state_dict().items(), from_obj.state_dict().items()):
        assert torch.equal(a, b), k


def test_multimodal_gemma3_directory(tmp_path):
    hf = make_gemma3_multimodal()
    hf.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gemma3"
    with pytest.warns(UserWarning):
        ours = qknorm.from_hf(tmp_path)  # language_model.model.* keys; vision tower dropped on purpose
    ids = input_ids()
    with torch.no_grad():
        assert rel_err(ours(ids), hf(input_ids=ids).logits) < 1e-5


def test_from_hf_does_not_alias_hf_parameters_and_dtype():
    hf = make_hf("llama")
    ours = qknorm.from_hf(hf, dtype="bf16")
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    ours32 = qknorm.from_hf(hf)
    with torch.no_grad():
        ours32.embed.weight.zero_()
    assert hf.model.embed_tokens.weight.abs().sum() > 0
    assert all(p.requires_grad for p in ours32.parameters())


def test_to_hf_config_is_complete_and_dtype(tmp_path):
    ours = qknorm.TransformerLM(qknorm.get_config("gemma3", "debug"))
    qknorm.to_hf(ours, tmp_path, dtype="bf16")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "gemma3_text" and cfg["architectures"] == ["Gemma3ForCausalLM"]
    assert cfg["dtype"] == "bfloat16" and cfg["query_pre_attn_scalar"] == 24
    assert cfg["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention"]
    assert {v.dtype for v in load_file(str(tmp_path / "model.safetensors")).values()} == {torch.bfloat16}
