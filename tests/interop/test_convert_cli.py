"""`qknorm convert` both ways, --check, --dtype, and one-line errors that write nothing."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import qknorm
from qknorm.cli import main

from helpers.hf_models import VOCAB, input_ids, make_hf, rel_err


def _run(capsys, *argv):
    code = main(["convert", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_from_hf_then_to_hf_with_check(tmp_path, capsys):
    hf = make_hf("gemma3")
    hf.save_pretrained(tmp_path / "hf", max_shard_size="60KB")
    code, out, err = _run(capsys, "--from-hf", tmp_path / "hf", "--out", tmp_path / "ours", "--check")
    assert code == 0, err
    assert "block 2" in out and "all stages match" in out and "wrote" in out
    ours = qknorm.load_model(tmp_path / "ours")
    with torch.no_grad():
        assert rel_err(ours(input_ids()), hf(input_ids=input_ids()).logits) < 1e-5
    code, out, err = _run(capsys, "--to-hf", tmp_path / "ours", "--out", tmp_path / "back", "--check",
                          "--seq-len", 40)
    assert code == 0, err
    assert "transformers gemma3_text" in out and "all stages match" in out
    saved = load_file(str(tmp_path / "back" / "model.safetensors"))
    for k, v in hf.state_dict().items():
        if k != "lm_head.weight":
            assert torch.equal(saved[k], v), k


def test_dtype_and_no_check_path(tmp_path, capsys):
    model = qknorm.TransformerLM(qknorm.get_config("olmo2", vocab_size=VOCAB))
    qknorm.save_model(model, tmp_path / "ours")
    code, out, err = _run(capsys, "--to-hf", tmp_path / "ours", "--out", tmp_path / "hf", "--dtype", "bf16")
    assert code == 0, err
    assert "bfloat16" in out
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    code, out, err = _run(capsys, "--from-hf", tmp_path / "hf", "--out", tmp_path / "ours2", "--check")
    assert code == 0, err  # the bf16 checkpoint is compared in float32 and stays bf16 on disk
    assert load_file(str(tmp_path / "ours2" / "model.safetensors"))["embed.weight"].dtype == torch.bfloat16


def test_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    model = qknorm.TransformerLM(qknorm.get_config("postln"))
    qknorm.save_model(model, tmp_path / "post")
    code, out, err = _run(capsys, "--to-hf", tmp_path / "post", "--out", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1 and "not representable" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("keep")
    make_hf("qwen3").save_pretrained(tmp_path / "hf")
    code, out, err = _run(capsys, "--from-hf", tmp_path / "hf", "--out", tmp_path / "busy")
    assert code == 2 and "is not empty; pass --overwrite" in err
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["f"]

    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, out, err = _run(capsys, "--from-hf", tmp_path / "hf", "--out", tmp_path / "y")
    assert code == 2 and "model_type 'bert' is not supported" in err and err.count("\n") == 1
    assert not (tmp_path / "y").exists()


def test_check_failure_writes_nothing(tmp_path, capsys, monkeypatch):
    make_hf("llama").save_pretrained(tmp_path / "hf")
    import qknorm.pretrained as opener  # convert reads every model through open_model (pretrained.py)

    real = opener.from_hf

    def broken(*a, **kw):  # a conversion bug: one weight off
        m = real(*a, **kw)
        with torch.no_grad():
            m.layers[1].attn.v_proj.weight.mul_(1.01)
        return m

    monkeypatch.setattr(opener, "from_hf", broken)
    code, out, err = _run(capsys, "--from-hf", tmp_path / "hf", "--out", tmp_path / "o", "--check")
    assert code == 1 and "first divergent stage: block 1" in out and "nothing written" in out
    assert not (tmp_path / "o").exists()


def test_cli_flags_are_frozen():
    import argparse

    from qknorm.cli import convert

    p = convert.add_parser(argparse.ArgumentParser().add_subparsers())
    flags = sorted(s for a in p._actions for s in a.option_strings)
    assert flags == sorted(["-h", "--help", "--from-hf", "--to-hf", "--from-olmo-core", "--out", "--dtype", "--check",
                            "--tol", "--seq-len", "--max-seq-len", "--overwrite", "--allow-folded", "--no-progress"])
    with pytest.raises(SystemExit):
        p.parse_args(["--from-hf", "a", "--to-hf", "b", "--out", "c"])
