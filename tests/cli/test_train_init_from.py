"""`qknorm train --init-from DIR`: a new run from an HF directory or any qknorm checkpoint starts exactly at the
source model's loss (computed here by transformers, or by the source loaded on its own), records where its
weights came from, takes the source's tokenizer, and refuses bad sources and shape changes in one line."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import qknorm
from qknorm.data.batcher import Batcher
from qknorm.data.tokens import load_tokens
from helpers.bpe import train_bpe_file
from helpers.cli import run_cli

torch.set_num_threads(1)
SMALL = ["--batch-size", "4", "--seq-len", "16", "--device", "cpu", "--no-progress", "--set", "stats_every=0",
         "--set", "eval_batches=1", "--seed", "3"]


def _corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(2):
        (d / f"f{i}.txt").write_text("".join(f"row {j} of {i}: " + "qknorm"[j % 6] * (j % 11) + "\n"
                                             for j in range(300)))
    return d


def _run(args, capsys):
    return run_cli("train", args, capsys)


def _first_loss(run: Path) -> float:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss"]


def _batch0(data, seed=3):
    return Batcher(data.train, batch_size=4, seq_len=16, seed=seed).batch(0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    """A tiny random transformers Llama (byte vocabulary) saved as safetensors."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-5, rope_theta=1e4)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the init, so a wrong or missing weight shows in the loss
            p.add_(0.05 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("hf") / "llama"
    model.save_pretrained(d)
    return model, d


def test_first_loss_equals_the_hf_source_loss_and_the_origin_is_recorded(tmp_path, capsys, hf_llama):
    hf, src = hf_llama
    corpus = _corpus(tmp_path)
    run = tmp_path / "run"
    code, _, err = _run(["--init-from", str(src), "--data", str(corpus), "--steps", "2", "--lr", "1e-3",
                         "--out", str(run), "--set", "attn_impl=eager", *SMALL], capsys)
    assert code == 0, err
    x, y = _batch0(load_tokens(str(corpus)))
    with torch.no_grad():
        expected = F.cross_entropy(hf(x).logits.flatten(0, 1), y.flatten()).item()
    assert _first_loss(run) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    origin = json.loads((run / "run.json").read_text())["origin"]["init_from"]
    assert origin["path"] == str(src.resolve()) and origin["format"] == "hf/llama"
    assert origin["weights_sha256"] == {"model.safetensors": _sha(src / "model.safetensors")}
    record = json.loads((run / "run.json").read_text())
    assert record["model_config"]["d_model"] == 32 and record["model_config"]["attn_impl"] == "eager"
    # the trained model is a new one, and a fresh run (not a copy of the source)
    assert not torch.equal(qknorm.load_model(run).embed.weight, hf.model.embed_tokens.weight)


def test_a_checkpoint_source_starts_at_its_loss_with_its_tokenizer(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    corpus = _corpus(tmp_path)
    tok_file = tmp_path / "tok.json"
    train_bpe_file(corpus, tok_file, vocab_size=280)
    base = tmp_path / "base"
    assert _run(["--preset", "llama", "--data", str(corpus), "--tokenizer", str(tok_file), "--steps", "3",
                 "--ckpt-every", "2", "--out", str(base), *SMALL], capsys)[0] == 0
    ckpt = base / "checkpoints" / "step_0000002"
    run = tmp_path / "run"
    code, _, err = _run(["--init-from", str(ckpt), "--data", str(corpus), "--steps", "4", "--ckpt-every", "2",
                         "--out", str(run), *SMALL], capsys)
    assert code == 0, err
    assert (run / "tokenizer.json").read_bytes() == (ckpt / "tokenizer.json").read_bytes()
    source = qknorm.load_model(ckpt)
    x, y = _batch0(load_tokens(str(corpus), tokenizer=str(tok_file)))
    with torch.no_grad():
        expected = F.cross_entropy(source(x).flatten(0, 1), y.flatten()).item()
    assert _first_loss(run) == pytest.approx(expected, rel=1e-6)
    origin = json.loads((run / "run.json").read_text())["origin"]["init_from"]
    assert origin["format"] == "qknorm" and origin["tokenizer"] == "tokenizer.json"
    assert origin["weights_sha256"] == {"model.safetensors": _sha(ckpt / "model.safetensors")}
    # another tokenizer is refused, in one line, unless --allow-changes
    other = tmp_path / "other.json"
    train_bpe_file([corpus / "f0.txt"], other, vocab_size=270)
    args = ["--init-from", str(ckpt), "--data", str(corpus), "--tokenizer", str(other), "--steps", "1", *SMALL]
    code, _, err = _run([*args, "--out", str(tmp_path / "r2")], capsys)
    assert code == 2 and len(err) == 1 and "--tokenizer=" in err[0] and "--allow-changes" in err[0], err
    assert not (tmp_path / "r2").exists()
    code, _, err = _run([*args, "--out", str(tmp_path / "r3"), "--allow-changes"], capsys)
    assert code == 0 and any("warning" in e and "differs" in e for e in err), err
    # the run started from a model resumes from its own record
    code, _, err = _run(["--out", str(run), "--resume", "--steps", "5", *SMALL], capsys)
    assert code == 0, err


@pytest.mark.parametrize("case", ["missing", "empty_dir", "unsupported_hf", "shape", "function", "preset", "resume",
                                  "vocab"])
def test_bad_sources_and_changes_are_one_line_and_write_nothing(tmp_path, capsys, hf_llama, case):
    _, src = hf_llama
    out = tmp_path / "out"
    extra: list = []
    if case == "missing":
        source = tmp_path / "nowhere"
    elif case == "empty_dir":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "unsupported_hf":
        source = tmp_path / "gpt2"
        source.mkdir()
        (source / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    else:
        source = src
        extra = {"shape": ["--set", "n_layers=3"], "function": ["--set", "rope_theta=5e5"],
                 "preset": ["--preset", "llama"], "resume": ["--resume"],
                 "vocab": ["--data", str(_write_ids(tmp_path))]}[case]
    code, _, err = _run(["--init-from", str(source), "--out", str(out), "--steps", "1", *extra, *SMALL], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("qknorm train: error: "), err
    expect = {"missing": "nowhere", "empty_dir": "config.json", "unsupported_hf": "gpt2", "shape": "n_layers=3",
              "function": "--allow-changes", "preset": "--preset", "resume": "--resume", "vocab": "vocab"}[case]
    assert expect in err[0], err
    assert not out.exists()


def _write_ids(tmp_path: Path) -> Path:
    """A token file whose ids (up to 299) do not fit the byte vocabulary of the source."""
    import numpy as np

    path = tmp_path / "ids.bin"
    np.arange(3000, dtype=np.uint16).__mod__(300).astype(np.uint16).tofile(path)
    return path
