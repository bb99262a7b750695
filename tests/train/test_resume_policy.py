"""Resume policy and the run's preconditions live in the library, once: `train(..., resume=True)` from Python plans
and refuses exactly as `qknorm train --resume` does (train/resume.py), and each rule (run directory, vocabulary,
batch split) is checked in one place with one error type.

Old behaviour: the plan (settings, model and data from run.json) and the refusal of a contradicting setting lived in
cli/train.py, so `train(..., resume=True)` with another lr only warned; check_out_dir ran twice per command; the
vocabulary rule existed three times (two ConfigErrors, one DataError); the batch split was checked twice."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import qknorm
from qknorm.cli import main
from qknorm.cli import train as train_cli
from qknorm.cli._common import to_flags
from qknorm.data.tokens import load_tokens
from qknorm.errors import CheckpointError, ConfigError, DataError
from qknorm.train import TrainConfig, preflight
from qknorm.train.loop import train
from qknorm.train.resume import plan_resume
from qknorm.train.runtime import Runtime
from helpers.cli import run_cli

torch.set_num_threads(1)
SMALL = ["--batch-size", "4", "--seq-len", "16", "--device", "cpu", "--no-progress", "--set", "stats_every=0",
         "--set", "eval_batches=1"]


def _corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(2):  # not the embedded corpus: resuming on the default data would show in the losses
        (d / f"f{i}.txt").write_text("".join(f"row {j} of part {i}: " + "qrstuvwx"[j % 8] * (j % 11) + "\n"
                                             for j in range(300)))
    return d


def _lines(path: Path) -> list:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in path.read_text().splitlines()]


def _files(run: Path) -> dict:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory):
    """A CLI run of 6 steps on a text corpus with a BPE tokenizer (vocabulary 300, grown from the preset's 256),
    stopped after its step-3 checkpoint as SIGTERM would stop it."""
    pytest.importorskip("tokenizers")
    from helpers.bpe import train_bpe_file

    tmp = tmp_path_factory.mktemp("cut")
    corpus, tok = _corpus(tmp), tmp / "tok.json"
    train_bpe_file(corpus, tok, vocab_size=300)
    run = tmp / "run"
    real = train_cli.train
    train_cli.train = lambda *a, **k: real(*a, **k, callback=lambda rec: rec.step == 2)
    try:
        assert main(["train", "--preset", "llama", "--set", "qk_norm=head", "--data", str(corpus), "--tokenizer",
                     str(tok), "--ckpt-every", "3", "--lr", "1e-2", "--steps", "6", "--out", str(run), *SMALL]) == 0
    finally:
        train_cli.train = real
    assert (run / "checkpoints" / "step_0000003").is_dir() and not (run / "model.safetensors").exists()
    return run


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


@pytest.mark.numerics
def test_python_resume_plans_like_the_command_line_and_ends_bit_identical(cut_run, tmp_path, capsys):
    cli, py = _copy(cut_run, tmp_path / "cli"), _copy(cut_run, tmp_path / "py")
    code, _, err = run_cli("train", ["--out", str(cli), "--resume", "--no-progress"], capsys)
    assert code == 0, err
    plan = plan_resume(py)  # the plan is the record's: the grown vocabulary, the settings, the run's tokenizer
    record = json.loads((py / "run.json").read_text())
    assert plan.model_config.to_dict() == record["model_config"] and plan.model_config.vocab_size == 300
    assert plan.cfg.to_dict() == record["train_config"] and plan.cfg.lr == 1e-2
    assert plan.data.fingerprint().sha256 == record["data"]["fingerprint"]["sha256"]
    result = train(out_dir=py, resume=True)  # nothing but the directory: the same plan
    assert result.steps_done == 6 and result.stop_reason is None
    assert _lines(cli / "metrics.jsonl") == _lines(py / "metrics.jsonl")  # the same curve, step for step
    a, b = qknorm.load_model(cli).state_dict(), qknorm.load_model(py).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], v) for k, v in result.model.state_dict().items())
    assert json.loads((cli / "divergence.json").read_text()) == json.loads((py / "divergence.json").read_text())


def _case(name: str, py: Path, tmp_path: Path):
    """(CLI flags, train(...) keywords) that ask the same contradicting thing of the run in `py`."""
    plan = plan_resume(py)
    if name == "setting":
        return ["--lr", "0.05"], dict(cfg=plan.cfg.replace(lr=0.05))
    if name == "data":
        other = tmp_path / "other.txt"
        other.write_text("entirely different text, not the run's\n" * 300)
        return ["--data", str(other)], dict(data=load_tokens(str(other), tokenizer=str(py / "tokenizer.json")))
    if name == "model":
        return ["--set", "n_layers=3"], dict(model_config=plan.model_config.replace(n_layers=3))
    assert name == "optimizer"  # refused even with allow_changes: the checkpoints hold AdamW state
    return ["--set", "optimizer=muon", "--allow-changes"], dict(cfg=plan.cfg.replace(optimizer="muon"),
                                                                allow_changes=True)


@pytest.mark.parametrize("name, error", [("setting", ConfigError), ("data", DataError), ("model", CheckpointError),
                                         ("optimizer", ConfigError)])
def test_refusals_are_the_same_error_from_python_and_the_command_line(cut_run, tmp_path, capsys, name, error):
    cli, py = _copy(cut_run, tmp_path / "cli"), _copy(cut_run, tmp_path / "py")
    flags, kwargs = _case(name, py, tmp_path)
    before = _files(py)
    with pytest.raises(error) as e:
        train(**{**dict(model_config=None, cfg=None, data=None), **kwargs}, out_dir=py, resume=True)
    assert _files(py) == before  # refused before anything was written
    before = _files(cli)
    code, _, err = run_cli("train", ["--out", str(cli), "--resume", *flags, "--no-progress"], capsys)
    assert code == 2 and len(err) == 1, err
    # the one check's message, its fields written as the flags (the directories differ: py/ vs cli/)
    assert err[0] == "qknorm train: error: " + to_flags(str(e.value), train_cli.FIELD_FLAGS).replace(str(py), str(cli))
    assert _files(cli) == before


def _count_calls(monkeypatch, module, name: str) -> dict:
    """Count the calls of module.<name> wherever it was imported."""
    real, calls = getattr(module, name), {"n": 0}

    def counted(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    for mod in list(sys.modules.values()):
        if mod is not None and getattr(mod, "__name__", "").startswith("qknorm") and getattr(mod, name, None) is real:
            monkeypatch.setattr(mod, name, counted)
    return calls


def test_each_rule_runs_once_per_command(cut_run, tmp_path, capsys, monkeypatch):
    dirs = _count_calls(monkeypatch, preflight, "check_out_dir")
    vocab = _count_calls(monkeypatch, preflight, "check_vocab")
    split = _count_calls(monkeypatch, preflight, "check_batch_split")
    fresh = ["--preset", "llama", "--steps", "2", "--warmup", "0", *SMALL]
    runs = {"fresh": [*fresh, "--out", str(tmp_path / "a")],
            "resume": ["--out", str(_copy(cut_run, tmp_path / "r")), "--resume", "--no-progress"],
            "init-from": ["--init-from", str(tmp_path / "a"), "--steps", "1", "--warmup", "0", "--out",
                          str(tmp_path / "b"), *SMALL]}
    for name, args in runs.items():
        for calls in (dirs, vocab, split):
            calls["n"] = 0
        code, _, err = run_cli("train", args, capsys)
        assert code == 0, (name, err)
        assert (dirs["n"], vocab["n"], split["n"]) == (1, 1, 1), name
    dirs["n"] = 0
    train(out_dir=_copy(cut_run, tmp_path / "p"), resume=True)
    assert dirs["n"] == 1


def test_a_vocabulary_too_small_is_one_config_error_everywhere(tmp_path, capsys):
    ids = tmp_path / "ids.bin"  # token ids up to 299: more than the byte vocabulary of 256
    import numpy as np

    (np.arange(4000) % 300).astype(np.uint16).tofile(ids)
    data = load_tokens(str(ids))
    with pytest.raises(ConfigError) as e:
        train(qknorm.get_config("llama", "debug", vocab_size=256), TrainConfig(steps=1, batch_size=2, seq_len=16),
              data)
    assert str(e.value).startswith("vocab_size=256 of the model is smaller than the data's vocabulary (300 tokens")
    code, _, err = run_cli("train", ["--preset", "llama", "--set", "vocab_size=256", "--data", str(ids), "--out",
                                     str(tmp_path / "r"), "--steps", "1", *SMALL], capsys)
    assert code == 2 and err == [f"qknorm train: error: {e.value}"] and not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="vocab_size=256 of the model is smaller"):  # from pretrained weights
        train(qknorm.get_config("llama", "debug"), TrainConfig(steps=1, batch_size=2, seq_len=16), data,
              init_state=qknorm.TransformerLM(qknorm.get_config("llama", "debug")).state_dict())


class _TwoGroups(Runtime):
    """One process that says the batch is split over two data-parallel groups (the split check reads dp_size)."""

    world_size = 2


def test_the_batch_split_is_one_config_error_naming_the_field(tmp_path, capsys):
    with pytest.raises(ConfigError) as e:  # 6 sequences / 2 micro-batches = 3 rows, not a multiple of 2 groups
        train(qknorm.get_config("llama", "debug"), TrainConfig(steps=1, batch_size=6, grad_accum=2, seq_len=16),
              load_tokens(max_bytes=30_000), runtime=_TwoGroups(), out_dir=tmp_path / "r")
    assert str(e.value) == ("batch_size=6 must split evenly over 2 data-parallel process(es) x grad_accum=2 "
                            "micro-batches") and not (tmp_path / "r").exists()
    assert preflight.check_batch_split(TrainConfig(batch_size=8, grad_accum=2), 2) == 4
    code, _, err = run_cli("train", ["--preset", "llama", "--out", str(tmp_path / "r"), *SMALL, "--grad-accum", "3"],
                           capsys)  # grad_accum must divide the batch: TrainConfig's own check, one line
    assert code == 2 and err == ["qknorm train: error: --grad-accum=3 must divide --batch-size=4"]
