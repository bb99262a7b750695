"""`qknorm inspect`: per-layer table and verdict on our model dirs and HF dirs; one-line errors."""

import json

import pytest
import torch

import qknorm
from qknorm.cli import main
from qknorm.diagnostics import stats_pass
from qknorm.data.tokens import load_tokens
from qknorm.train import TrainConfig
from qknorm.train.loop import train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect") / "run"
    cfg = qknorm.get_config("gemma3", "debug")  # 3 layers: sliding, sliding, full
    train(cfg, TrainConfig(steps=4, batch_size=4, seq_len=32, progress=False, stats_every=0),
          load_tokens(max_bytes=100_000), out_dir=out)
    return out


def test_table_has_one_row_per_layer_and_a_verdict(trained, capsys):
    assert main(["inspect", str(trained), "--text", "def f(x):\n    return x * 2\n"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"model: {trained} (3 layers") and "qk_norm=head" in lines[0]
    assert lines[1] == "text: 27 tokens (bytes) from --text"
    assert lines[2].split() == ["layer", "type", "max", "logit", "bound", "q", "RMS", "k", "RMS"]
    rows = [line.split() for line in lines[3:6]]
    assert [r[:2] for r in rows] == [["0", "sliding"], ["1", "sliding"], ["2", "full"]]
    assert lines[-1].startswith("verdict: max attention logit ") and lines[-1].endswith("bounded")


def test_json_matches_a_direct_stats_pass(trained, capsys):
    assert main(["inspect", str(trained), "--ids", "1,2,3,4,5,6,7,8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = stats_pass(qknorm.load_model(trained), torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]))
    assert [r["max_attn_logit"] for r in out["layers"]] == pytest.approx(want.attn_logit_per_layer)
    assert out["max_attn_logit"] == pytest.approx(want.max_attn_logit) and out["text"].startswith("8 ids")
    assert out["qk_norm"] == "head" and out["verdict"].endswith("bounded")


def test_default_text_and_seq_len(trained, capsys):
    assert main(["inspect", str(trained), "--seq-len", "40"]) == 0
    assert "text: 40 tokens (bytes) from the start of os.py" in capsys.readouterr().out


def test_hf_directory_gives_the_same_numbers(trained, tmp_path, capsys):
    hf_dir = tmp_path / "hf"
    qknorm.to_hf(qknorm.load_model(trained), hf_dir)
    assert "qknorm_config" not in json.loads((hf_dir / "config.json").read_text())
    assert main(["inspect", str(hf_dir), "--ids", "5,6,7,8", "--json"]) == 0
    hf = json.loads(capsys.readouterr().out)
    assert main(["inspect", str(trained), "--ids", "5,6,7,8", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert hf["max_attn_logit"] == pytest.approx(ours["max_attn_logit"], rel=1e-5)


def test_large_vocab_without_tokenizer_uses_random_ids_and_says_so_but_text_needs_one(tmp_path, capsys):
    out = tmp_path / "big"
    qknorm.save_model(qknorm.TransformerLM(qknorm.get_config("llama", "debug", vocab_size=1000)), out)
    assert main(["inspect", str(out)]) == 0  # e.g. a converted OLMo-core checkpoint: no tokenizer stored
    printed = capsys.readouterr().out
    assert "text: 256 random token ids (seed 0): no tokenizer.json with the model" in printed and "verdict" in printed
    assert main(["inspect", str(out), "--text", "hello"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qknorm inspect: error: the model's vocabulary has 1000 tokens: give --tokenizer")
    assert main(["inspect", str(out), "--ids", "999,3"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["{missing}"], "not a model directory"),
    (["{run}", "--ids", "1,x"], "--ids '1,x': expected comma-separated integers"),
    (["{run}", "--ids", "1,256"], "token id 256 is outside the model's vocabulary [0, 256)"),
    (["{run}", "--text-file", "{missing}"], "cannot read --text-file"),
    (["{run}", "--text", "hi", "--tokenizer", "{missing}"], "file not found"),
    (["{empty}"], "config.json: file not found"),
])
def test_bad_input_is_one_line_exit_2(trained, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    subst = {"{run}": str(trained), "{missing}": str(tmp_path / "nope"), "{empty}": str(tmp_path / "empty")}
    rc = main(["inspect", *[subst.get(a, a) for a in argv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("qknorm inspect: error: ") and message in err[0], err

