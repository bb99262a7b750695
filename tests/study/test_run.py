"""One run's outcome (study/run.py): an error is `failed`, only a measured divergence is `diverged`."""
import math
import types

import pytest

from qknorm import study
from qknorm.study import run as run_mod


def _spec():
    plan = study.make_plan("smoke", variants=("baseline",), lrs=(1e-3,), steps=2, workers=1, device="cpu")
    return study.run_specs(plan, 256)[0]


def _result(*, diverged, loss, stop_reason=None):
    """What train() returns, for the fields run_one reads."""
    return types.SimpleNamespace(
        summary={}, diverged=diverged, stop_reason=stop_reason, steps_done=2, init_loss=5.5, final_loss=loss,
        val_loss=loss, max_attn_logit=3.0, tokens_per_s=1.0,
        history=[{"step": 0, "loss": 5.5, "lr": 1e-3, "grad_norm": 1.0}, {"step": 1, "loss": loss, "lr": 1e-3,
                                                                           "grad_norm": 1.0}])


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
                        lambda *a, **k: _result(diverged=False, loss=2.0, stop_reason="stopped by SIGINT"))
    rec = study.run_one(_spec())
    assert rec.status.value == "failed" and run_mod.interrupted(rec)


def test_old_summary_files_read_back_with_the_right_status():
    """summary.json before `status` existed: a run that raised was written as diverged with an error text."""
    base = dict(variant="baseline", lr=1e-3, seed=0)
    assert study.RunRecord.from_json({**base, "diverged": True, "error": "RuntimeError: x"}).status.value == "failed"
    assert study.RunRecord.from_json({**base, "diverged": True}).status.value == "diverged"
    assert study.RunRecord.from_json({**base, "cut": True, "error": "skipped"}).status.value == "cut"
    assert study.RunRecord.from_json({**base}).status.value == "ok"
