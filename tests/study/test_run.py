"""One run's outcome (study/run.py): an error is `failed`, only a measured divergence is `diverged`."""
import dataclasses
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from qknorm import study
from qknorm.study import run as run_mod
from qknorm.train.run_summary import summarize
from qknorm.train.step_record import StepRecord
from qknorm.train.stop import StopKind, StopReason

from helpers.load import scaled


def _spec():
    plan = study.make_plan("smoke", variants=("baseline",), lrs=(1e-3,), steps=2, workers=1, device="cpu")
    return study.run_specs(plan, 256)[0]


def _result(*, diverged, loss, stop_reason=None):
    """What train() returns, for the fields run_one reads."""
    history = [StepRecord(step=0, loss=5.5, lr=1e-3, grad_norm=1.0, tokens=64, time_s=0.5),
               StepRecord(step=1, loss=loss, lr=1e-3, grad_norm=1.0, tokens=128, time_s=1.0)]
    return types.SimpleNamespace(
        summary=summarize(history), diverged=diverged, stop_reason=stop_reason, steps_done=2, init_loss=5.5,
        final_loss=loss, val_loss=loss, max_attn_logit=3.0, tokens_per_s=1.0, muon_ns=None, verdict=None,
        compile_report=None, history=history)


def test_a_run_that_raises_is_failed_not_diverged(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(run_mod, "train", boom)
    rec = study.run_one(_spec()).to_json()
    assert rec["status"] == "failed" and rec["diverged"] is False and rec["error"] == "RuntimeError: out of memory"
    assert rec["val_loss"] is None and "traceback" in rec


@pytest.mark.parametrize("loss, diverged, status", [(math.nan, True, "diverged"), (6.0, True, "diverged"),
                                                     (2.0, False, "ok")])
def test_only_a_measured_divergence_is_diverged(monkeypatch, loss, diverged, status):
    monkeypatch.setattr(run_mod, "train", lambda *a, **k: _result(diverged=diverged, loss=loss))
    rec = study.run_one(_spec())
    assert rec.status.value == status and rec.diverged is diverged and rec.error is None


def test_a_run_stopped_by_a_signal_is_failed_and_marks_an_interrupt(monkeypatch):
    monkeypatch.setattr(run_mod, "train",
                        lambda *a, **k: _result(diverged=False, loss=2.0, stop_reason=StopReason.by_signal("SIGINT")))
    rec = study.run_one(_spec())
    assert rec.status.value == "failed" and run_mod.interrupted(rec)
    assert rec.stop_reason == "stopped by SIGINT" and rec.stopped_by is StopKind.SIGNAL
    back = study.RunRecord.from_json(json.loads(json.dumps(rec.to_json())))  # as the study's files hold it
    assert back.stopped_by is StopKind.SIGNAL and run_mod.interrupted(back)


def test_a_run_the_deadline_stopped_is_cut_and_not_an_interrupt(monkeypatch):
    monkeypatch.setattr(run_mod, "train",
                        lambda *a, **k: _result(diverged=False, loss=2.0, stop_reason=StopReason.by_callback()))
    spec = dataclasses.replace(_spec(), train=_spec().train.replace(steps=5))
    rec = study.run_one(spec)
    assert rec.status.value == "cut" and not run_mod.interrupted(rec) and rec.stopped_by is StopKind.CALLBACK


def test_old_summary_files_read_back_with_the_right_status():
    """summary.json before `status` existed: a run that raised was written as diverged with an error text."""
    base = dict(variant="baseline", lr=1e-3, seed=0)
    assert study.RunRecord.from_json({**base, "diverged": True, "error": "RuntimeError: x"}).status.value == "failed"
    assert study.RunRecord.from_json({**base, "diverged": True}).status.value == "diverged"
    assert study.RunRecord.from_json({**base, "cut": True, "error": "skipped"}).status.value == "cut"
    assert study.RunRecord.from_json({**base}).status.value == "ok"


def test_a_worker_whose_data_differ_from_the_plans_fails_the_run_and_says_why(tmp_path):
    """The worker reads the data itself: a path missing there, or tokens other than those the study was planned on
    (their fingerprint), fail the run with the reason instead of training on something else."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def f(x):\n    return x + 1\n" * 300)
    data = study.run.load_tokens(str(corpus))
    spec = dataclasses.replace(_spec(), data=str(corpus), data_fingerprint=data.fingerprint().short)
    missing = study.run_one(dataclasses.replace(spec, data=str(tmp_path / "gone.txt")))
    assert missing.failed and not missing.diverged
    assert missing.error == f"DataError: data path {tmp_path / 'gone.txt'} does not exist"
    corpus.write_text("class A:\n    pass\n" * 500)  # the same path, other tokens (e.g. another node's copy)
    other = study.run_one(spec)
    assert other.failed and "DataError: data " + str(corpus) in other.error
    assert f"not the {spec.data_fingerprint} the study was planned on" in other.error


_NO_WRITES = r"""
import json, os, sys
from qknorm import study
spec = study.run_specs(study.make_plan("smoke", variants=("qknorm",), lrs=(1e-3,), steps=3, workers=1,
                                       device="cpu"), 256)[0]
study.run_one(spec)  # once first: torch's first use makes its node-local cache dir (/tmp/torchinductor_<user>)
writes = []
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def hook(event, args):
    if event == "open" and ((args[1] or "r").strip("rbt") or (args[2] or 0) & WRITE):
        writes.append(f"open {args[0]} {args[1]} {args[2]}")
    elif event in ("os.mkdir", "os.rename", "os.remove", "shutil.rmtree", "os.truncate", "os.symlink"):
        writes.append(f"{event} {args[0]}")


sys.addaudithook(hook)
rec = study.run_one(spec)
print(json.dumps({"status": rec.status.value, "writes": writes}))
"""


def test_a_run_writes_no_file_so_workers_need_no_shared_filesystem(tmp_path):
    """A whole real run under an audit hook (every open for writing, mkdir, rename, remove): the run returns its
    record and writes nothing (after a first run in the same process, which lets torch make its node-local cache
    dir), so workers on other machines (Ray) need no shared filesystem and the driver alone writes the study's
    files. The hook itself is checked by hand: np.save, os.makedirs and open(.., 'a') in its place are reported."""
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", _NO_WRITES], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=scaled(240))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"status": "ok", "writes": []}
    assert list(tmp_path.iterdir()) == []


def test_a_setting_the_loop_refuses_is_refused_not_failed(monkeypatch):
    from qknorm import ConfigError

    def refuse(*a, **k):
        raise ConfigError("qk_clip=50 cannot act on sigma_reparam=True projections")

    monkeypatch.setattr(run_mod, "train", refuse)
    rec = study.run_one(_spec()).to_json()
    assert rec["status"] == "refused" and rec["diverged"] is False and rec.get("traceback") is None
    assert rec["error"] == "refused: qk_clip=50 cannot act on sigma_reparam=True projections"


def test_a_real_refused_combination_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    """qk_clip with sigma_reparam (no study variant combines them; a made-up one does): the real training loop
    refuses it before any step; the study records it as refused, trains the rest and reports the arm as refused."""
    from qknorm.study.variants import TrainSettings, Variant

    monkeypatch.setitem(study.VARIANTS, "clip_sigma", Variant("llama", {"sigma_reparam": True}, "made up",
                                                              TrainSettings(qk_clip=50.0)))
    plan = study.make_plan("smoke", variants=("baseline", "clip_sigma"), lrs=(1e-3,), steps=2, workers=1,
                           device="cpu")
    s = study.run_study(plan, tmp_path / "s", report=False, log=lambda _: None)
    status = {r.variant: r.status.value for r in s.runs}
    assert status == {"baseline": "ok", "clip_sigma": "refused"}
    row = {r.variant: r for r in s.analysis.leaderboard}["clip_sigma"]
    assert row.status == "refused" and "sigma_reparam" in row.note
    assert "refused (1 run" in study.format_table(s)


def test_a_real_run_records_entropy_log_z_and_step_times():
    """At initialization (weights ~ N(0, 0.02)) the output logits are ~0 (std ~0.2), so log Z = ln(vocab) +
    sigma^2 / 2 ~ ln(vocab) + 0.02, and q.k ~ 0, so attention is uniform: each query t of T sees t + 1 keys,
    entropy ln(t + 1) (both analytic values)."""
    rec = study.run_one(_spec())
    h = rec.history
    T = 32  # the smoke profile's seq_len
    assert rec.log_z_start == h.log_z[0] == pytest.approx(math.log(256), abs=0.05)
    assert rec.log_z_end == h.log_z[-1] and rec.log_z_drift == pytest.approx(h.log_z[-1] - h.log_z[0])
    uniform = sum(math.log(t + 1) for t in range(T)) / T
    assert sum(h.attn_entropy[0]) / len(h.attn_entropy[0]) == pytest.approx(uniform, abs=0.01)
    assert rec.attn_entropy == pytest.approx(sum(h.attn_entropy[-1]) / len(h.attn_entropy[-1]))
    assert rec.attn_entropy_min_layer == min(h.attn_entropy[-1])
    assert rec.step_ms > 0 and rec.step_cpu_ms > 0 and rec.optimizer == "adamw"
