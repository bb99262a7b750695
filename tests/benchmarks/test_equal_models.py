"""Benchmarks compare equal models: ours from the `olmo2 372m` preset has HF's anchor shape exactly, `describe`
reads both libraries alike (from the built modules), and the training-step benchmark refuses, in one line
naming both, to time models that differ — before anything is timed or written."""

from pathlib import Path

import pytest
import torch

import qknorm
from qknorm.benchmarks import train_models
from qknorm.benchmarks.equal_models import (UnequalModelsError, describe, require_equal,
                                            require_same_but_qk_norm)
from qknorm.cli import main

pytest.importorskip("transformers")


def test_ours_372m_preset_is_hfs_anchor_shape():
    """Built on the meta device: no memory, no time. 371,524,608 is HF Olmo2ForCausalLM's own count."""
    records = {name: train_models.plan(train_models.VARIANTS[name], train_models.ANCHOR_372M, torch.bfloat16)
               for name in ("hf", "ours", "hf_noqk", "ours_noqk")}
    assert records["ours"] == records["hf"]
    assert records["ours"].params == 371_524_608 and records["ours"].head_dim == 64
    assert records["ours"].n_kv_heads == records["ours"].n_heads == 16
    assert records["ours"].qk_norm_params == 16 * (1024 + 1024)  # OLMo 2 full-width q and k gains per layer
    assert records["ours_noqk"] == records["hf_noqk"] and records["ours_noqk"].qk_norm_params == 0
    require_same_but_qk_norm(("ours", records["ours"]), ("hf_noqk", records["hf_noqk"]))
    assert qknorm.get_config("olmo2", "372m").num_params() == records["ours"].params


def test_describe_reads_head_dim_from_the_modules_of_both_libraries():
    """Qwen3 with head_dim 32 != d_model / n_heads = 16, GQA: a describe() that derived head_dim would differ."""
    import transformers

    ours = qknorm.TransformerLM(qknorm.get_config("qwen3", "debug"), device="meta")
    cfg = transformers.Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                   tie_word_embeddings=False)
    with torch.device("meta"):
        hf = transformers.Qwen3ForCausalLM(cfg)
    a, b = describe(ours), describe(hf)
    assert a == b and (a.head_dim, a.n_heads, a.n_kv_heads, a.qk_norm_params) == (32, 4, 2, 2 * 2 * 32)
    assert a.params == sum(p.numel() for p in hf.parameters())


def test_require_equal_names_both_models():
    r = train_models.plan(train_models.VARIANTS["ours"], train_models.SMOKE, torch.float32)
    other = qknorm.TransformerLM(qknorm.get_config("olmo2", "debug"), device="meta")
    with pytest.raises(UnequalModelsError) as e:
        require_equal([("hf", r), ("ours", describe(other))])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("refusing to time unequal models: hf has ") and ", ours has " in msg
    with pytest.raises(UnequalModelsError, match="differ by the QK-norm gains alone"):
        require_same_but_qk_norm(("ours", r), ("other", describe(other)))


def test_bench_train_refuses_the_old_unequal_construction(tmp_path, monkeypatch, capsys):
    """The construction behind the withdrawn H200 figures: the debug preset with the anchor's width and heads,
    which kept the debug size's derived head_dim (16). The smoke must refuse it: exit 2, one line naming both
    models and their parameter counts, nothing timed, nothing written."""

    def old_ours_config(shape, *, qk_norm):
        over = dict(shape.model_fields(), head_dim=16)  # what get_config("olmo2", "debug", d_model=..) built
        if not qk_norm:
            over["qk_norm"] = "none"
        return qknorm.get_config("olmo2", "debug", **over)

    monkeypatch.setattr(train_models, "ours_config", old_ours_config)
    timed = []
    monkeypatch.setattr(train_models, "build", lambda *a: timed.append(a))
    out = tmp_path / "results"
    assert main(["bench", "train", "--cpu-smoke", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "refusing to time unequal models" in captured.err
    hf = train_models.plan(train_models.VARIANTS["hf"], train_models.SMOKE, torch.float32)
    ours = describe(qknorm.TransformerLM(old_ours_config(train_models.SMOKE, qk_norm=True), device="meta"))
    assert hf.params != ours.params
    assert f"hf has {hf.params:,} parameters" in captured.err and f"ours has {ours.params:,} parameters" in captured.err
    assert "head_dim 32" in captured.err and "head_dim 16" in captured.err
    assert timed == [] and not out.exists()


def test_bench_hf_cpu_refuses_unequal_models(monkeypatch):
    """bench/bench_hf_cpu.py builds ours with qknorm.from_hf(hf); if that ever built another shape, it refuses."""
    import argparse
    import runpy

    from qknorm.benchmarks.equal_models import UnequalModelsError

    ns = runpy.run_path(str(Path(__file__).resolve().parents[2] / "bench" / "bench_hf_cpu.py"), run_name="not_main")
    a = argparse.Namespace(vocab=64, d_model=32, d_ff=64, layers=1, heads=4, kv_heads=2, head_dim=8, seq=8,
                           attn="sdpa")
    ours, hf, record = ns["build_pair"]("olmo2", a)
    assert record == describe(hf) and record.head_dim == 8
    wrong = qknorm.TransformerLM(qknorm.get_config("olmo2", "debug", vocab_size=64, d_model=32, n_layers=1,
                                                   n_heads=4, n_kv_heads=2, d_ff=64, head_dim=16))
    monkeypatch.setitem(ns["build_pair"].__globals__, "qknorm", type("Q", (), {"from_hf": lambda hf: wrong}))
    with pytest.raises(UnequalModelsError, match="refusing to time unequal models: ours has"):
        ns["build_pair"]("olmo2", a)
