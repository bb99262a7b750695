"""`qknorm generate`: end to end (subprocess) on a byte-level model directory of ours and on an HF directory with
a tokenizer.json (a BPE trained here, offline); incremental decoding of characters split across tokens; a
closed stdout pipe; one-line errors with exit status 2."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qknorm
from qknorm.cli import main
from qknorm.cli.generate import ByteText, TokenizerText

from helpers.load import scaled
from helpers.peaked import peaked

tokenizers = pytest.importorskip("tokenizers")
torch.set_num_threads(1)

SRC = str(Path(qknorm.__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
ASCII_TEXT = Path(os.__file__).read_text()[:30_000].encode("ascii", "ignore").decode()


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "qknorm", "generate", *args], capture_output=True, env=ENV,
                          timeout=scaled(120), **kw)


@pytest.fixture(scope="module")
def byte_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen") / "bytes"
    qknorm.save_model(peaked("llama"), d)
    return d


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE trained on ASCII text only: a non-ASCII character stays split into its byte tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([ASCII_TEXT], trainer)
    return tok


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, bpe):
    """An HF Qwen3 directory (exported by to_hf) holding the BPE's tokenizer.json; vocab = the BPE's."""
    d = tmp_path_factory.mktemp("gen") / "hf"
    model = peaked("qwen3", 1, vocab_size=bpe.get_vocab_size())
    qknorm.to_hf(model, d)
    bpe.save(str(d / "tokenizer.json"))
    return d


# --------------------------------------------------------------------------------------------- end to end
def test_byte_model_streams_its_greedy_continuation(byte_dir):
    prompt = "def main(x):\n    return"
    r = cli(str(byte_dir), "--prompt", prompt, "--max-new-tokens", "40")
    assert r.returncode == 0 and r.stderr == b""
    ids = torch.tensor([list(prompt.encode())])
    new = qknorm.load_model(byte_dir).generate(ids, 40)[0, ids.shape[1]:]
    assert r.stdout == (bytes(new.tolist()).decode("utf-8", errors="replace") + "\n").encode()


def test_hf_dir_with_tokenizer_samples_like_the_library(hf_dir, bpe, capsys):
    prompt = "import os\nfrom sys import"
    flags = ["--max-new-tokens", "30", "--temperature", "0.9", "--top-k", "40", "--top-p", "0.95", "--seed", "4"]
    r = cli(str(hf_dir), "--prompt", prompt, *flags)
    assert r.returncode == 0 and r.stderr == b""
    ids = torch.tensor([bpe.encode(prompt, add_special_tokens=False).ids])
    model = qknorm.from_hf(hf_dir)
    new = model.generate(ids, 30, temperature=0.9, top_k=40, top_p=0.95, seed=4)[0, ids.shape[1]:]
    assert r.stdout.decode() == bpe.decode(new.tolist()) + "\n"
    assert main(["generate", str(hf_dir), "--prompt", prompt, "--max-new-tokens", "30"]) == 0
    assert capsys.readouterr().out != r.stdout.decode()  # greedy differs: the sampling flags reached the sampler


def test_closed_stdout_pipe_ends_quietly(byte_dir):
    cmd = f"{sys.executable} -m qknorm generate {byte_dir} --prompt x --max-new-tokens 250 2>err.txt | head -c 10;" \
          " echo \" ${PIPESTATUS[0]}\""
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, env=ENV, cwd=byte_dir, timeout=scaled(120))
    out, status = r.stdout.rsplit(b" ", 1)
    assert len(out) == 10 and status.strip() == b"0"
    assert (byte_dir / "err.txt").read_text() == ""
    (byte_dir / "err.txt").unlink()


def test_each_token_is_flushed_as_it_comes(byte_dir, monkeypatch):
    events = []

    class Recorder:
        def write(self, s):
            events.append(("write", s))

        def flush(self):
            events.append(("flush", None))

        def fileno(self):
            return 1

    monkeypatch.setattr(sys, "stdout", Recorder())
    assert main(["generate", str(byte_dir), "--prompt", "ab", "--max-new-tokens", "12"]) == 0
    writes = [s for kind, s in events if kind == "write"]
    assert len(writes) >= 6 and all(b[0] == "flush" for a, b in zip(events, events[1:]) if a[0] == "write")


# --------------------------------------------------------------------------------------------- decoding
def test_byte_stream_waits_for_a_whole_character():
    dec = ByteText()
    pieces = [dec.step(b) for b in "é€x".encode()] + [dec.finish()]
    assert pieces == ["", "é", "", "", "€", "x", ""]
    broken = ByteText()
    assert [broken.step(0xC3), broken.step(0x41), broken.finish()] == ["", "\ufffdA", ""]
    assert ByteText().step(0xE2) == "" and (lambda d: (d.step(0xE2), d.finish())[1])(ByteText()) == "\ufffd"


def test_tokenizer_stream_rebuilds_text_with_split_characters(bpe):
    text = "naïve café: über façade — ok 中文"
    ids = bpe.encode(text, add_special_tokens=False).ids
    assert any(bpe.decode([i]) == "\ufffd" for i in ids)  # some characters really are split across tokens
    dec = TokenizerText(bpe)
    pieces = [dec.step(i) for i in ids] + [dec.finish()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) > 10  # streamed piece by piece, not all at the end


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("flags,match", [
    (["--temperature", "-1"], "argument --temperature: expected a finite number >= 0"),
    (["--top-p", "0"], r"argument --top-p: expected a number in \(0, 1\]"),
    (["--top-p", "1.5"], "argument --top-p"), (["--top-k", "x"], "argument --top-k"),
    (["--max-new-tokens", "0"], "argument --max-new-tokens: expected a positive integer"),
    (["--seed", "-2"], "argument --seed"),
])
def test_bad_numbers_exit_2_with_one_line(byte_dir, capsys, flags, match):
    with pytest.raises(SystemExit) as e:
        main(["generate", str(byte_dir), "--prompt", "x", *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("qknorm generate: error: ") and re.search(match, err)


def test_unusable_inputs_exit_2_with_one_line(byte_dir, tmp_path, capsys):
    no_tok = tmp_path / "vocab300"
    qknorm.save_model(qknorm.TransformerLM(qknorm.get_config("llama", "debug", vocab_size=300)), no_tok)
    cases = [
        ([str(tmp_path / "missing"), "--prompt", "x"], "missing: not a model directory"),
        ([str(no_tok), "--prompt", "x"], "vocabulary has 300 tokens and there is no tokenizer.json"),
        ([str(byte_dir), "--prompt", ""], "--prompt: no tokens"),
        ([str(byte_dir), "--prompt", "x" * 200, "--max-new-tokens", "57"],
         "--max-new-tokens=57: the prompt's 200 tokens \\+ 57 new ones exceed the model's max_seq_len=256 "
         "\\(at most 56 new tokens fit\\)"),
        ([str(byte_dir), "--prompt", "x", "--eos-token-id", "256"],
         "--eos-token-id=256 is outside the vocabulary \\[0, 256\\)"),
    ]
    for argv, match in cases:
        assert main(["generate", *argv]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
        assert re.search(match, captured.err), captured.err
    assert json.loads((no_tok / "config.json").read_text())["qknorm_config"]["vocab_size"] == 300


def test_a_trained_run_with_its_tokenizer(tmp_path, bpe, capsys):
    """`qknorm train --tokenizer` stores the tokenizer with the run; `qknorm generate RUN` decodes with it."""
    data, tok = tmp_path / "data.txt", tmp_path / "tok.json"
    data.write_text(ASCII_TEXT)
    bpe.save(str(tok))
    run = tmp_path / "run"
    assert main(["train", "--preset", "qwen3", "--data", str(data), "--tokenizer", str(tok), "--steps", "8",
                 "--batch-size", "2", "--seq-len", "16", "--set", f"vocab_size={bpe.get_vocab_size()}",
                 "--set", "stats_every=0", "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "import os", "--max-new-tokens", "12"]) == 0
    ids = torch.tensor([bpe.encode("import os", add_special_tokens=False).ids])
    new = qknorm.load_model(run).generate(ids, 12)[0, ids.shape[1]:]
    assert capsys.readouterr().out == bpe.decode(new.tolist()) + "\n"
