"""max_position_embeddings missing or unknown (OLMo-core's HF export writes -1; null; 0) -> the family's
transformers default for max_seq_len, which the caller can raise; transformers itself loads such configs."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

import qknorm
from qknorm.cli import main
from qknorm.interop.hf_config import FAMILIES, config_from_hf

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

transformers = pytest.importorskip("transformers")

DEFAULTS = {"olmo": 2048, "olmo2": 2048, "qwen3": 32768, "gemma3_text": 131072, "llama": 2048, "qwen2": 32768,
            "mistral": 131072,
            "olmo3": 2048, "cohere": 8192, "stablelm": 4096, "exaone4": 2048, "hunyuan_v1_dense": 2048,
            "llama4_text": 131072, "olmoe": 4096, "qwen3_moe": 32768}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
@pytest.mark.parametrize("value", [-1, None, 0, "unknown"])
def test_unknown_max_position_embeddings_gets_the_family_default(model_type, value):
    with pytest.warns(UserWarning, match=f"max_position_embeddings={value!r} \\(unknown\\)"):
        config, _ = config_from_hf({"model_type": model_type, "max_position_embeddings": value})
    assert config.max_seq_len == DEFAULTS[model_type] == FAMILIES[model_type].defaults["max_position_embeddings"]


def test_missing_field_is_transformers_default_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config_from_hf({"model_type": "olmo2"})[0].max_seq_len == 2048
        assert config_from_hf({"model_type": "olmo2", "max_position_embeddings": 4096})[0].max_seq_len == 4096


def test_caller_sets_max_seq_len(tmp_path, recwarn):
    assert config_from_hf({"model_type": "qwen3", "max_position_embeddings": -1}, max_seq_len=8192)[0] \
        .max_seq_len == 8192
    assert not recwarn.list  # an explicit value needs no warning
    hf = transformers.Olmo2ForCausalLM(transformers.Olmo2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=-1)).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["max_position_embeddings"] == -1
    ours = qknorm.from_hf(tmp_path / "hf", max_seq_len=4096)
    assert ours.config.max_seq_len == 4096
    ids = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        assert torch.equal(ours(ids), hf(ids).logits)  # transformers loads -1 and runs; so do we
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "o"), "--max-seq-len",
                 "16384"]) == 0
    assert qknorm.load_model(tmp_path / "o").config.max_seq_len == 16384


def test_bad_max_seq_len_flag_is_one_line(tmp_path, capsys):
    assert main(["convert", "--to-hf", str(tmp_path), "--out", str(tmp_path / "o"), "--max-seq-len", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-seq-len applies to --from-hf and --from-olmo-core" in err
    assert not (tmp_path / "o").exists()
