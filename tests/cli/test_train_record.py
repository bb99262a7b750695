"""A run's record is whole: `qknorm train --out R --resume` alone continues exactly (data, tokenizer, model and
settings come from R/run.json), contradicting flags are refused naming the recorded value unless
--allow-changes, everything is checked before anything is written, the tokenizer travels with the model, every
checkpoint is a model, and the exit status tells the outcome."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qknorm
from qknorm.cli import main
from qknorm.train import TrainConfig
from qknorm.io.checkpoints.layout import META
from qknorm.train.loop import train
from qknorm.data.tokens import load_tokens
from helpers.bpe import train_bpe_file
from helpers.cli import run_cli
from helpers.load import scaled

torch.set_num_threads(1)
SMALL = ["--batch-size", "4", "--seq-len", "16", "--device", "cpu", "--no-progress", "--set", "stats_every=0",
         "--set", "eval_batches=1"]


def _lines(path: Path) -> list:
    """metrics.jsonl records without their wall-clock times."""
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in path.read_text().splitlines()]


def _corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(3):  # not the embedded corpus: a resume on the default data would show in the losses
        (d / f"f{i}.txt").write_text("".join(f"line {j} of file {i}: " + "abcdefgh"[j % 8] * (j % 13) + "\n"
                                             for j in range(400)))
    return d


def _run(args, capsys):
    return run_cli("train", args, capsys)


@pytest.mark.numerics
def test_resume_without_data_or_preset_continues_on_the_recorded_run(tmp_path, capsys, monkeypatch):
    """Old behaviour: `--resume` without --data silently continued on the embedded corpus (loss jump)."""
    corpus = _corpus(tmp_path)
    full, cut = tmp_path / "full", tmp_path / "cut"
    fresh = ["--preset", "llama", "--data", str(corpus), "--ckpt-every", "3", "--lr", "1e-2", "--steps", "6", *SMALL]
    assert _run([*fresh, "--out", str(full)], capsys)[0] == 0
    from qknorm.cli import train as train_cli  # the same run, interrupted after 3 steps (as SIGTERM would)

    real = train_cli.train
    with monkeypatch.context() as m:
        m.setattr(train_cli, "train", lambda *a, **k: real(*a, **k, callback=lambda rec: rec.step == 2))
        assert _run([*fresh, "--out", str(cut)], capsys)[0] == 0
    assert not (cut / "model.safetensors").exists() and (cut / "checkpoints" / "step_0000003").is_dir()
    record = json.loads((cut / "run.json").read_text())
    assert record["data"]["spec"] == str(corpus.resolve()) and record["origin"]["preset"] == "llama"
    assert record["data"]["fingerprint"]["n_tokens"] > 0 and len(record["data"]["fingerprint"]["sha256"]) == 64
    code, _, err = _run(["--out", str(cut), "--resume", "--no-progress"], capsys)
    assert code == 0, err
    assert _lines(full / "metrics.jsonl") == _lines(cut / "metrics.jsonl")  # the same curve, step for step
    a, b = qknorm.load_model(full), qknorm.load_model(cut)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_flags_that_contradict_the_record_are_refused_unless_allowed(tmp_path, capsys):
    corpus, run = _corpus(tmp_path), tmp_path / "run"
    assert _run(["--preset", "llama", "--data", str(corpus), "--ckpt-every", "2", "--steps", "2", "--out", str(run),
                 *SMALL], capsys)[0] == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, _, err = _run(["--out", str(run), "--resume", "--steps", "4", "--lr", "0.05", *SMALL], capsys)
    assert code == 2 and len(err) == 1 and "--lr=0.05 contradicts the run's record (--lr was 0.003" in err[0], err
    assert "--allow-changes" in err[0]
    other = tmp_path / "other.txt"
    other.write_text("entirely different text\n" * 400)
    code, _, err = _run(["--out", str(run), "--resume", "--steps", "4", "--data", str(other), *SMALL], capsys)
    assert code == 2 and len(err) == 1 and "differ from the run's record" in err[0] and str(corpus) in err[0], err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing touched
    code, out, err = _run(["--out", str(run), "--resume", "--steps", "4", "--lr", "0.05", "--allow-changes",
                           *SMALL], capsys)
    assert code == 0 and any("warning: resuming step_0000002 with changed training settings (lr 0.003 -> 0.05)" in e
                             for e in err), err


def test_seq_len_beyond_max_seq_len_is_one_line_and_leaves_nothing(tmp_path):
    """Old behaviour: --seq-len 512 on a 256 model trained silently; 100000 died with a traceback from a 640 GB
    allocation and left an empty metrics.jsonl that blocked reusing --out."""
    out = tmp_path / "q"
    base = [sys.executable, "-m", "qknorm", "train", "--preset", "qwen3", "--steps", "2", "--batch-size", "2",
            "--out", str(out), "--device", "cpu", "--no-progress"]
    p = subprocess.run([*base, "--seq-len", "100000"], capture_output=True, text=True, timeout=scaled(120))
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert "--seq-len=100000 is longer than the model's max_seq_len=256" in p.stderr
    assert not out.exists()
    p = subprocess.run([*base, "--seq-len", "32"], capture_output=True, text=True, timeout=scaled(180))
    assert p.returncode == 0, p.stderr


def test_other_settings_are_checked_before_anything_is_written(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    code, _, err = _run(["--preset", "llama", "--steps", "5", "--warmup", "9", "--out", str(out), *SMALL], capsys)
    assert code == 2 and err == ["qknorm train: error: --warmup=9 must be <= --steps=5 (the LR would never reach "
                                 "its peak)"] and not out.exists()
    from qknorm.train import preflight

    monkeypatch.setattr(preflight, "available_bytes", lambda device: 10_000_000)  # a 10 MB machine
    code, _, err = _run(["--preset", "llama", "--steps", "2", "--out", str(out), "--batch-size", "4", "--seq-len",
                         "256", "--device", "cpu", "--no-progress", "--set", "stats_every=1"], capsys)
    assert code == 2 and len(err) == 1
    assert "stats_every=1: the attention-statistics pass at --seq-len=256 needs ~0.00839 GB" in err[0]
    assert not out.exists()


def test_a_fresh_run_that_fails_in_its_first_step_leaves_the_directory_as_it_was(tmp_path, monkeypatch):
    from qknorm.train import step

    def boom(*a, **k):
        raise MemoryError("simulated out-of-memory in the first step")

    monkeypatch.setattr(step, "forward_loss", boom)
    data = load_tokens(max_bytes=30_000)
    for out in (tmp_path / "new", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        with pytest.raises(MemoryError):
            train(qknorm.get_config("llama", "debug"), TrainConfig(steps=2, batch_size=2, seq_len=16, progress=False),
                  data, out_dir=out)
        assert not out.exists() if out.name == "new" else list(out.iterdir()) == []


def test_the_tokenizer_travels_with_the_run_its_checkpoints_and_exports(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    corpus = _corpus(tmp_path)
    tok_file = tmp_path / "tok.json"
    tok = train_bpe_file(corpus, tok_file, vocab_size=300)
    run = tmp_path / "run"
    assert _run(["--preset", "llama", "--data", str(corpus), "--tokenizer", str(tok_file), "--steps", "2",
                 "--ckpt-every", "1", "--out", str(run), *SMALL], capsys)[0] == 0
    tok_file.unlink()  # the run must not depend on the original file any more
    ckpts = sorted((run / "checkpoints").glob("step_*"))
    for d in (run, *ckpts):
        assert (d / "tokenizer.json").is_file(), d
    assert "tokenizer.json" in json.loads((ckpts[0] / META).read_text())["files"]  # checksummed like the rest
    assert qknorm.load_tokenizer(run).get_vocab_size() == tok.get_vocab_size()
    code = main(["inspect", str(ckpts[0]), "--text", "line 3 of file 1"])
    assert code == 0 and "tokenizer tokenizer.json" in capsys.readouterr().out
    assert main(["convert", "--to-hf", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()
    code, _, err = _run(["--out", str(run), "--resume", "--steps", "3", *SMALL], capsys)  # resumes with its copy
    assert code == 0, err


def test_every_checkpoint_is_a_model(tmp_path, capsys):
    """inspect / convert --to-hf / load_model accept an intermediate checkpoint, full or sharded."""
    from qknorm.io.checkpoints.sharded import save_sharded
    from qknorm.train.optim import build_optimizer
    from qknorm.train.runtime import Runtime

    run = tmp_path / "run"
    data = load_tokens(max_bytes=30_000)
    cfg = TrainConfig(steps=3, batch_size=2, seq_len=16, ckpt_every=1, keep_last=5, stats_every=0, progress=False,
                      eval_batches=1)
    res = train(qknorm.get_config("gemma3", "debug"), cfg, data, out_dir=run)
    step1 = run / "checkpoints" / "step_0000001"
    m1 = qknorm.load_model(step1)
    assert not torch.equal(m1.embed.weight, res.model.embed.weight)  # an earlier state, not the final one
    m3 = qknorm.load_model(run / "checkpoints" / "step_0000003")
    assert all(torch.equal(a, b) for a, b in zip(m3.state_dict().values(), res.model.state_dict().values()))
    assert main(["inspect", str(step1), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_attn_logit"] > 0
    assert main(["convert", "--to-hf", str(step1), "--out", str(tmp_path / "hf1")]) == 0
    assert torch.equal(qknorm.from_hf(tmp_path / "hf1").embed.weight, m1.embed.weight)
    # a sharded (torch.distributed.checkpoint) checkpoint is consolidated in one process
    model = qknorm.TransformerLM(qknorm.get_config("gemma3", "debug"))
    save_sharded(tmp_path / "sh", 7, Runtime(), model, build_optimizer(model, cfg),
                 model_config=model.config, train_config=cfg.to_dict())
    back = qknorm.load_model(tmp_path / "sh" / "step_0000007")
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))
    # a run directory without its final model (interrupted): its newest checkpoint, with a warning line
    shutil.copytree(run / "checkpoints", tmp_path / "interrupted" / "checkpoints")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "interrupted")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"qknorm inspect: warning: {tmp_path / 'interrupted'} has no final model yet; using its newest "
                   "checkpoint step_0000003"], err


def test_exit_status_tells_a_diverged_run_and_the_summary_has_the_verdict(tmp_path, capsys):
    # 10 steps: two windows of 5, the shortest run judged on more than finiteness (metrics.judge_divergence)
    code, out, err = _run(["--preset", "llama", "--steps", "10", "--lr", "5", "--warmup", "0", "--set",
                           "stats_every=1", "--out", str(tmp_path / "d"), "--batch-size", "4", "--seq-len", "16",
                           "--device", "cpu", "--no-progress"], capsys)
    assert code == 1 and len(err) == 2 and err[-1].startswith("qknorm train: error: the run diverged"), err
    verdict = json.loads((tmp_path / "d" / "divergence.json").read_text())
    assert verdict["diverged"] is True and verdict["reason"] in ("non_finite", "above_uniform", "rose"), verdict
    code, out, err = _run(["--preset", "llama", "--steps", "3", "--set", "stats_every=1", "--out",
                           str(tmp_path / "ok"), *SMALL[:-4], "--no-progress"], capsys)
    assert code == 0 and "max attention logit" in out and ": bounded" in out, out


def test_version_and_set_typos(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"qknorm {qknorm.__version__}"
    assert main(["train", "--preset", "llama", "--set", "d_modle=64"]) == 2
    assert "did you mean 'd_model'?" in capsys.readouterr().err


def test_a_closed_stdout_pipe_neither_hangs_nor_prints_a_traceback(tmp_path):
    cmd = [sys.executable, "-m", "qknorm", "train", "--preset", "llama", "--steps", "2", "--out", str(tmp_path / "p"),
           *SMALL]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the summary line is written (like `| head -0`)
    _, err = p.communicate(timeout=scaled(180))
    assert p.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err


def test_a_checkpoint_config_of_an_earlier_version_still_resumes(tmp_path):
    """Configs saved before RoPE variants hold `rope_scaling: 1.0`; the checkpoint compares as that model."""
    data = load_tokens(max_bytes=30_000)
    cfg = TrainConfig(steps=2, batch_size=2, seq_len=16, ckpt_every=2, stats_every=0, progress=False, eval_batches=1)
    train(qknorm.get_config("llama", "debug"), cfg, data, out_dir=tmp_path)
    meta_path = tmp_path / "checkpoints" / "step_0000002" / META
    meta = json.loads(meta_path.read_text())
    meta["model_config"]["rope_scaling"] = 1.0
    meta_path.write_text(json.dumps(meta))
    r = train(qknorm.get_config("llama", "debug"), cfg.replace(steps=3), data, out_dir=tmp_path, resume=True)
    assert r.steps_done == 3
