"""`qknorm study --compile` plumbing (no compile here: tests/train/test_compile.py compiles): the flag reaches every
run's TrainConfig, compiled and eager runs are one study (same fingerprint; a rerun with the other setting reuses
the stored runs), the workers see one inductor cache under the study's directory while it runs, and the summary
says whether runs were compiled and sums what dynamo reported."""
import os

from qknorm import study
from qknorm.cli import main
from qknorm.study import RunHistory, RunRecord
from qknorm.study.plan import plan_fingerprint, run_specs

SEEN = []


def compiled_runner(spec):
    """A fake run that reports what a compiled one would: where its inductor cache is, one graph, no break."""
    SEEN.append((spec.train.compile, os.environ.get("TORCHINDUCTOR_CACHE_DIR")))
    return RunRecord(variant=spec.variant, lr=spec.lr, seed=spec.seed, init_loss=5.0, final_loss=3.0, val_loss=3.0,
                     max_attn_logit=10.0, steps=spec.train.steps, compile_graphs=1, compile_graph_breaks=0,
                     compile_recompiles=0 if spec.lr < 1e-2 else 1, history=RunHistory(step=[0], loss=[5.0]))


def test_compile_reaches_every_run_but_not_the_fingerprint(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    eager, compiled = (study.make_plan("quick", lrs=(1e-3, 3e-2), workers=1, compile=c) for c in (False, True))
    assert plan_fingerprint(eager) == plan_fingerprint(compiled)
    assert all(s.train.compile for s in run_specs(compiled, 256))
    assert [s.identity() for s in run_specs(compiled, 256)] == [s.identity() for s in run_specs(eager, 256)]
    SEEN.clear()
    out = tmp_path / "s"
    s = study.run_study(compiled, out, runner=compiled_runner, report=False, log=lambda _: None)
    assert SEEN == [(True, str((out / ".compile_cache").resolve()))] * 4
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ  # set for the study only
    assert s.config.compile == {"on": True, "cache_dir": str((out / ".compile_cache").resolve()), "graphs": 4,
                                   "graph_breaks": 0, "recompiles": 2}
    SEEN.clear()
    s = study.run_study(eager, out, runner=compiled_runner, report=False, log=lambda _: None)
    assert SEEN == [] and s.config.reused_runs == 4 and s.config.compile == {"on": False}


def test_the_cli_flag(monkeypatch, tmp_path):
    plans = []
    monkeypatch.setattr(study, "run_study", lambda plan, *a, **k: plans.append(plan) or (_ for _ in ()).throw(
        KeyboardInterrupt))
    for flag, want in (([], False), (["--compile"], True), (["--no-compile"], False)):
        try:
            main(["study", "--quick", "--out", str(tmp_path / "x"), "--device", "cpu", *flag])
        except KeyboardInterrupt:
            pass
        assert plans[-1].train.compile is want
