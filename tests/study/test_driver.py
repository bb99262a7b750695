"""run_study (study/driver.py): a study resumes from its stored runs (reused only when the stored spec is
identical), an interrupt keeps what finished, the report is written without plots when matplotlib is missing,
and what the study prints about itself is true (plurals, labels, no empty plot panels)."""
import base64
import builtins
import json

import pytest

from qknorm import study
from qknorm.study import RunHistory, RunRecord

CALLS = []


def ok_runner(spec):
    """Module-level fake run: records which specs were trained."""
    CALLS.append(spec.name)
    val = 2.0 + abs(spec.lr - 1e-2)
    return RunRecord(variant=spec.variant, lr=spec.lr, seed=spec.seed, init_loss=5.0, final_loss=val, val_loss=val,
                     max_attn_logit=10.0, steps=spec.train.steps,
                     history=RunHistory(step=[0, 1], loss=[5.0, val], stats_step=[0], max_attn_logit=[10.0]))


def flaky_runner(spec):
    """qknorm at 0.1 is cut by the budget, baseline at 0.1 raises."""
    if spec.name == "qknorm_lr0.1_s0":
        CALLS.append(spec.name)
        return RunRecord(variant=spec.variant, lr=spec.lr, seed=spec.seed, status="cut", error="stopped at step 1",
                         history=RunHistory(step=[0], loss=[5.0]))
    if spec.name == "baseline_lr0.1_s0":
        CALLS.append(spec.name)
        raise RuntimeError("boom")
    return ok_runner(spec)


def _plan(**kw):
    return study.make_plan("quick", **{**dict(lrs=(1e-3, 1e-2, 1e-1), workers=1), **kw})


def _study(plan, out, runner=ok_runner, **kw):
    CALLS.clear()
    lines = []
    summary = study.run_study(plan, out, runner=runner, report=False, log=lines.append, **kw)
    return summary, sorted(CALLS), lines


def test_a_rerun_trains_only_what_did_not_finish_and_trusts_stored_specs_not_names(tmp_path):
    out, plan = tmp_path / "s", _plan()
    s, calls, _ = _study(plan, out, flaky_runner)
    assert len(calls) == 6 and {r.status.value for r in s.runs} == {"ok", "cut", "failed"}
    s, calls, lines = _study(plan, out)  # the same command again: only the cut and the failed run
    assert calls == ["baseline_lr0.1_s0", "qknorm_lr0.1_s0"]
    assert "reusing 4 finished runs" in lines[0] and s.config.reused_runs == 4
    assert all(r.status.value == "ok" for r in s.runs) and len(s.runs) == 6
    _, calls, _ = _study(plan, out)  # a finished study: nothing to train
    assert calls == []
    # a stored run whose spec differs from the new one (here: edited) is trained again, whatever its name
    path = out / "runs" / "baseline_lr0.001_s0.json"
    stored = json.loads(path.read_text())
    stored["spec"]["train"]["steps"] += 1
    path.write_text(json.dumps(stored))
    (out / "runs" / "qknorm_lr0.001_s0.json").write_text(json.dumps({"variant": "qknorm", "lr": 1e-3, "seed": 0}))
    _, calls, _ = _study(plan, out)
    assert calls == ["baseline_lr0.001_s0", "qknorm_lr0.001_s0"]


def test_runs_are_not_reused_when_the_data_changed_under_the_same_path(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("def f(x):\n    return x + 1\n" * 400)
    plan, out = _plan(lrs=(1e-3,), data=str(data)), tmp_path / "s"
    _study(plan, out)
    data.write_text("class A:\n    pass\n" * 600)
    _, calls, _ = _study(plan, out)
    assert calls == ["baseline_lr0.001_s0", "qknorm_lr0.001_s0"]


def interrupting_runner(spec):
    if len(CALLS) == 2:
        raise KeyboardInterrupt
    return ok_runner(spec)


def test_an_interrupt_keeps_the_finished_runs_for_the_rerun(tmp_path):
    out, plan = tmp_path / "s", _plan()
    CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        study.run_study(plan, out, runner=interrupting_runner, report=False, log=lambda _: None)
    finished = sorted(p.stem for p in (out / "runs").glob("*.json"))
    assert len(finished) == 2 and not (out / "summary.json").exists()
    _, calls, _ = _study(plan, out)
    assert len(calls) == 4 and not set(calls) & set(finished)


def test_without_matplotlib_the_report_has_no_plots_and_says_so(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    lines = []
    out = tmp_path / "s"
    summary = study.run_study(_plan(lrs=(1e-3, 1e-1), seeds=1), out, runner=ok_runner, log=lines.append)
    assert any("matplotlib is not installed" in line and "pip install 'qknorm[plots]'" in line for line in lines)
    page = (out / "report.html").read_text()
    assert "No plots: matplotlib is not installed" in page and "<img" not in page
    assert not list(out.glob("*.png")) and summary.config.plots is False
    # what it prints about itself: "1 seed", and a custom grid is not labelled as the profile's
    assert "x 1 seed," in lines[0] and "1 seeds" not in lines[0] and "(quick profile, custom LRs)" in lines[0]
    assert "quick profile, custom LRs" in page and "x 1 seed," in page and "1 seeds" not in page
    assert study.plan_label(study.make_plan("quick")) == "quick profile"


def test_plots_have_no_empty_panel_when_runs_were_cut(tmp_path, monkeypatch):
    from qknorm.study import plots

    def cut_at_top(spec):
        if spec.lr == 1e-1:
            return RunRecord(variant=spec.variant, lr=spec.lr, seed=spec.seed, status="cut", error="skipped")
        return ok_runner(spec)

    out = tmp_path / "s"
    summary, _, _ = _study(_plan(), out, cut_at_top)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    plots.write_plots(out, summary)
    curves = figures[3]
    assert [ax.get_title() for ax in curves.axes] == ["peak LR 0.001", "peak LR 0.01"]
    for fig in figures:
        for ax in fig.axes:
            legend = ax.get_legend()
            assert legend is None or [t.get_text() for t in legend.get_texts()], ax.get_title()


def test_a_study_whose_every_run_was_cut_still_writes_its_report(tmp_path):
    def all_cut(spec):
        return RunRecord(variant=spec.variant, lr=spec.lr, seed=spec.seed, status="cut", error="skipped")

    out = tmp_path / "s"
    summary = study.run_study(_plan(), out, runner=all_cut, log=lambda _: None)
    assert (out / "report.html").is_file() and summary.analysis.lr_sensitivity["baseline"].value is None
    assert "cut by the time budget: 6 runs" in study.format_table(summary)


def test_a_plot_that_cannot_be_drawn_leaves_a_report_that_says_so(tmp_path, monkeypatch):
    from qknorm.study import report

    def broken(out, summary):
        raise ValueError("Data cannot be log-scaled")

    monkeypatch.setattr(report, "write_plots", broken)
    lines, out = [], tmp_path / "s"
    summary = study.run_study(_plan(lrs=(1e-3,)), out, runner=ok_runner, log=lines.append)
    assert "the plots could not be drawn (ValueError: Data cannot be log-scaled)" in (out / "report.html").read_text()
    assert summary.config.plots is False and json.loads((out / "summary.json").read_text())["config"]["plots"] is False
    assert lines[-1].startswith("note: report.html has no plots")


def test_a_rerun_with_nothing_new_keeps_the_plots_and_a_changed_result_redraws_them(tmp_path):
    """A finished study run again redraws nothing (matplotlib is most of a rerun's time): the PNGs stay as they
    were and report.html still embeds them; once a stored result changes, the plots are drawn again."""
    pytest.importorskip("matplotlib")
    out, plan = tmp_path / "s", _plan()
    study.run_study(plan, out, runner=ok_runner, log=lambda _: None)
    pngs = sorted(out.glob("*.png"))
    assert pngs, "the first run draws the plots"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in pngs}
    CALLS.clear()
    study.run_study(plan, out, runner=ok_runner, log=lambda _: None)
    assert CALLS == [] and all(p.stat().st_mtime_ns == t for p, (t, _) in before.items())
    page = (out / "report.html").read_text()
    assert all(base64.b64encode(b).decode() in page for _, b in before.values())
    path = out / "runs" / "baseline_lr0.01_s0.json"  # a stored result that differs from what the plots show
    stored = json.loads(path.read_text())
    stored["record"]["val_loss"] += 0.5
    path.write_text(json.dumps(stored))
    study.run_study(plan, out, runner=ok_runner, log=lambda _: None)
    assert all(p.stat().st_mtime_ns != t for p, (t, _) in before.items())
