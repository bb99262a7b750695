"""qknorm study: plan, aggregation (LR sensitivity, checks) on hand-made runs, failure handling, CLI errors,
and a tiny real end-to-end study."""
import json
import math
import os

import pytest

from qknorm import ConfigError, study
from qknorm.cli import main
from qknorm.study import RunHistory, RunRecord
from qknorm.study.plan import plan_fingerprint
from qknorm.study.records import SpikeScores
from qknorm.study.study_config import StudyConfig

L0 = 5.0


def _run(variant, lr, val, logit, *, seed=0, diverged=False, error=None, **kw):
    status = "diverged" if diverged else "ok"
    return RunRecord(**{**dict(variant=variant, lr=lr, seed=seed, init_loss=L0, final_loss=val, val_loss=val,
                               max_attn_logit=logit, max_attn_logit_nonfinite=False, status=status,
                               error=error), **kw})


def _plan(variants=("baseline", "qknorm"), lrs=(1e-3, 1e-2, 3e-2, 1e-1), seeds=1):
    return study.make_plan("quick", variants=variants, lrs=lrs, seeds=seeds, workers=1)


def _analyze(runs, plan, vocab_size=256):
    """The analysis as summary.json holds it (lr_sensitivity, lr_sensitivity_detail, checks)."""
    return study.analyze(runs, plan.variants, plan.lrs, plan.seeds, vocab_size).to_json()


def _summary(runs, lrs, variants=("baseline", "qknorm")):
    plan = _plan(variants=variants, lrs=lrs)
    return study.StudySummary(runs=tuple(runs), analysis=study.analyze(runs, plan.variants, plan.lrs, plan.seeds, 256),
                              config=StudyConfig(lrs=tuple(lrs), variants=tuple(variants), seeds=(0,)))


# ---------------------------------------------------------------------------------------------- aggregation
def test_lr_sensitivity_and_checks_by_hand():
    runs = [
        # baseline: [2.0, 1.8, 3.0, diverged] -> clipped [2.0, 1.8, 3.0, 5.0], l* 1.8 -> (0.2 + 0 + 1.2 + 3.2)/4
        _run("baseline", 1e-3, 2.0, 5.0), _run("baseline", 1e-2, 1.8, 40.0), _run("baseline", 3e-2, 3.0, 2000.0),
        _run("baseline", 1e-1, None, 9000.0, diverged=True),
        # qknorm: [2.0, 1.7, 1.9, 2.1] -> l* 1.7 -> (0.3 + 0 + 0.2 + 0.4)/4
        _run("qknorm", 1e-3, 2.0, 4.0), _run("qknorm", 1e-2, 1.7, 8.0), _run("qknorm", 3e-2, 1.9, 10.0),
        _run("qknorm", 1e-1, 2.1, 12.0),
    ]
    s = _analyze(runs, _plan(), vocab_size=256)
    assert s["lr_sensitivity"]["baseline"] == pytest.approx(4.6 / 4)
    assert s["lr_sensitivity"]["qknorm"] == pytest.approx(0.9 / 4)
    assert s["lr_sensitivity_detail"]["baseline"]["best_loss"] == pytest.approx(1.8)
    c1, c2 = s["checks"]["max_logit_ratio"], s["checks"]["lr_sensitivity_ratio"]
    assert [p["ratio"] for p in c1["per_lr"]] == pytest.approx([200.0, 750.0])
    assert c1["lr"] == 1e-1 and c1["value"] == pytest.approx(750.0) and c1["passed"] is True
    assert c2["value"] == pytest.approx(0.9 / 4.6) and c2["passed"] is True
    table = study.format_table(_summary(runs, [1e-3, 1e-2, 3e-2, 1e-1]))
    assert "[PASS]" in table and "1/4" in table  # one diverged baseline run


def test_checks_fail_on_measured_numbers_and_average_seeds():
    # no logit growth and equal sensitivity: both checks FAIL (never passed by construction)
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.2)):
        for v in ("baseline", "qknorm"):
            runs += [_run(v, 1e-3, 2.0 + shift, 5.0, seed=seed), _run(v, 3e-2, 2.5, 6.0, seed=seed)]
    s = _analyze(runs, _plan(lrs=(1e-3, 3e-2), seeds=2), vocab_size=256)
    # per seed: seed 0 (0 + 0.5)/2 = 0.25, seed 1 (0 + 0.3)/2 = 0.15 -> mean 0.2
    assert s["lr_sensitivity"]["baseline"] == pytest.approx(0.2)
    assert s["lr_sensitivity_detail"]["baseline"]["per_seed"] == {"0": pytest.approx(0.25), "1": pytest.approx(0.15)}
    c1, c2 = s["checks"]["max_logit_ratio"], s["checks"]["lr_sensitivity_ratio"]
    assert c1["passed"] is False and c1["value"] == pytest.approx(1.0)
    assert c2["passed"] is False and c2["value"] == pytest.approx(1.0)
    plan = _plan(lrs=(1e-3, 3e-2), seeds=2)
    checks = study.analyze(runs, plan.variants, plan.lrs, plan.seeds, 256).checks
    assert "[FAIL]" in "\n".join(study.format_checks(checks))


def test_checks_not_evaluated_without_the_pair_and_nonfinite_logit_is_inf():
    s = _analyze([_run("olmo2", 3e-2, 2.0, 5.0)], _plan(variants=("olmo2",), lrs=(3e-2,)), 256)
    assert s["checks"]["max_logit_ratio"]["passed"] is None and s["checks"]["lr_sensitivity_ratio"]["passed"] is None
    runs = [_run("baseline", 3e-2, None, None, diverged=True, max_attn_logit_nonfinite=True),
            _run("qknorm", 3e-2, 2.0, 9.0)]
    c1 = _analyze(runs, _plan(lrs=(3e-2,)), 256)["checks"]["max_logit_ratio"]
    assert c1["value"] == "inf" and c1["passed"] is True
    json.dumps(c1, allow_nan=False)  # strict JSON


def test_plan_errors_name_the_field():
    """Library errors name the plan's fields; the CLI maps them to its flags (test_cli_errors_... below)."""
    with pytest.raises(ConfigError, match="^variants.*'nope'.*baseline, qknorm, qknorm_full, .*, postln$"):
        study.parse_variants("baseline,nope")
    with pytest.raises(ConfigError, match="^lrs: 'x' is not a learning rate"):
        study.parse_lrs("1e-3,x")
    with pytest.raises(ConfigError, match="^lrs"):
        study.parse_lrs("-1")
    with pytest.raises(ConfigError, match="^steps"):
        study.make_plan("quick", steps=0)
    assert study.parse_lrs("3e-2, 1e-3") == (1e-3, 3e-2)


def test_variants_share_one_shape_and_differ_in_norms():
    plan = study.make_plan("default")
    cfgs = {v: study.model_config(v, plan.shape, 256) for v in study.VARIANTS}
    for c in cfgs.values():
        assert (c.d_model, c.n_layers, c.n_heads, c.head_dim, c.d_ff, c.vocab_size) == (128, 2, 2, 64, 512, 256)
        assert c.sliding_window is None and c.query_scale == 64 ** -0.5
    assert cfgs["baseline"].replace(qk_norm="head") == cfgs["qknorm"]
    family = plan.variants  # the default profile: the five families (the stabilizers: test_variants.py)
    assert [cfgs[v].placement.value for v in family] == ["pre", "pre", "reordered", "sandwich", "post"]
    assert [cfgs[v].qk_norm.value for v in family] == ["none", "head", "full", "head", "none"]


# ---------------------------------------------------------------------------------------------- running
def fake_runner(spec):
    """Module-level (picklable for worker processes): qknorm flat, baseline worse at high LR; two bad specs."""
    if spec.variant == "postln" and spec.lr > 0.05:
        raise RuntimeError("boom")
    if spec.variant == "olmo2" and spec.lr > 0.05 and os.environ.get("QKNORM_TEST_KILL") == "1":
        os._exit(3)  # a worker that dies
    base = spec.variant == "baseline"
    val = 2.0 + (math.log10(spec.lr / 1e-3) if base else 0.1)
    return RunRecord(variant=spec.variant, lr=spec.lr, seed=spec.seed, init_loss=L0, final_loss=val, val_loss=val,
                     max_attn_logit=(1e4 if base else 10.0) * spec.lr, steps=spec.train.steps,
                     spike_score=SpikeScores(loss=0.0, grad_norm=0.0),
                     history=RunHistory(step=[0, 1], loss=[L0, val], stats_step=[0], max_attn_logit=[1.0]))


@pytest.mark.parametrize("workers", [1, 2])
def test_failed_runs_are_recorded_not_fatal(tmp_path, monkeypatch, workers):
    monkeypatch.setenv("QKNORM_TEST_KILL", "1" if workers > 1 else "0")
    plan = study.make_plan("quick", variants=("baseline", "qknorm", "olmo2", "postln"), lrs=(1e-3, 1e-1),
                           workers=workers)
    s = study.run_study(plan, tmp_path / "out", runner=fake_runner, report=False, log=lambda _: None).to_json()
    assert len(s["runs"]) == 8
    boom = next(r for r in s["runs"] if r["variant"] == "postln" and r["lr"] == 1e-1)
    assert boom["status"] == "failed" and boom["diverged"] is False  # an error is not a divergence
    assert boom["error"] == "RuntimeError: boom" and boom["val_loss"] is None
    assert s["lr_sensitivity"]["postln"] is None  # left out, not counted as l0
    if workers > 1:
        dead = next(r for r in s["runs"] if r["variant"] == "olmo2" and r["lr"] == 1e-1)
        assert dead["status"] == "failed" and dead["diverged"] is False and "worker process died" in dead["error"]
    assert sum(r["error"] is not None for r in s["runs"]) == (2 if workers > 1 else 1)
    assert s["checks"]["max_logit_ratio"]["passed"] is True  # 1e4x the LR vs 10x the LR
    assert (tmp_path / "out" / "runs" / "postln_lr0.1_s0.json").is_file()
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["lr_sensitivity"] == s["lr_sensitivity"] and saved["runs"] == s["runs"]


def test_out_dir_guard(tmp_path):
    plan = _plan(lrs=(1e-3,))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds files that are not a qknorm study.*force"):
        study.check_out_dir(tmp_path / "other", plan_fingerprint(plan), force=False)
    study.check_out_dir(tmp_path / "other", plan_fingerprint(plan), force=True)
    out = tmp_path / "s"
    study.run_study(plan, out, runner=fake_runner, report=False, log=lambda _: None)
    study.check_out_dir(out, plan_fingerprint(plan), force=False)  # the same study may be re-run in place
    with pytest.raises(ConfigError, match="holds a different study"):
        study.check_out_dir(out, plan_fingerprint(_plan(lrs=(1e-2,))), force=False)


# ---------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv, message", [
    (["--variants", "baseline,bogus"], "--variants: unknown variant 'bogus'"),
    (["--lrs", "1e-3,abc"], "--lrs: 'abc' is not a learning rate"),
    (["--device", "tpu"], "--device='tpu' is not allowed"),
    (["--steps", "0"], "--steps=0 must be an integer >= 1"),
    (["--data", "/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    assert main(["study", "--quick", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_different_study(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "plan.json").write_text(json.dumps({"fingerprint": "something else"}))
    assert main(["study", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a different study" in err and err.count("\n") == 1


def test_tiny_real_study_end_to_end(tmp_path, capsys):
    """2 variants x 2 LRs x a few steps, 1 worker, through the CLI: summary.json schema, report, plots."""
    out = tmp_path / "study"
    rc = main(["study", "--profile", "smoke", "--variants", "baseline,qknorm", "--lrs", "1e-3,3e-2",
               "--steps", "4", "--workers", "1", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "LR sensitivity" in printed and "max attention logit" in printed
    s = json.loads((out / "summary.json").read_text())
    assert len(s["runs"]) == 4
    for r in s["runs"]:
        for key in ("variant", "lr", "seed", "final_loss", "val_loss", "max_attn_logit", "diverged", "init_loss",
                    "spike_score", "steps", "time_s", "error"):
            assert key in r, key
        assert r["steps"] == 4 and r["error"] is None and r["max_attn_logit"] > 0
        assert set(r["spike_score"]) >= {"loss", "grad_norm"}
        h = json.loads((out / "runs" / f"{r['variant']}_lr{r['lr']:g}_s0.json").read_text())
        assert len(h["loss"]) == 4 and h["stats_step"] and len(h["max_attn_logit"]) == len(h["stats_step"])
    assert set(s["lr_sensitivity"]) == {"baseline", "qknorm"}
    assert set(s["checks"]) == {"max_logit_ratio", "lr_sensitivity_ratio"}
    cfg = s["config"]
    assert cfg["lrs"] == [1e-3, 3e-2] and cfg["seeds"] == [0] and cfg["model_shape"]["d_model"] == 64
    assert cfg["environment"]["torch"] and cfg["environment"]["device"] == "cpu" and cfg["train"]["dtype"] == "bf16"
    assert "standard-library" in cfg["data"]["source"]
    for name in ("report.html", "loss_vs_lr.png", "max_logit_vs_lr.png", "max_logit_over_steps.png",
                 "loss_curves.png"):
        assert (out / name).stat().st_size > 1000, name


def test_runs_cut_by_the_time_budget_leave_sensitivity_undefined_not_l0():
    """A grid point whose run was skipped or cut short by --max-minutes must not count as l0 (that would make
    the variant look LR-sensitive): the variant's sensitivity is None and the cut points are listed."""
    def cut(v, lr):
        return _run(v, lr, None, None, error="stopped at step 3: the study's time budget", status="cut")

    runs = [_run("baseline", 1e-3, 2.0, 5.0), _run("baseline", 1e-1, 3.0, 500.0),
            _run("qknorm", 1e-3, 2.0, 4.0), cut("qknorm", 1e-1)]
    s = _analyze(runs, _plan(lrs=(1e-3, 1e-1)), 256)
    assert s["lr_sensitivity"]["baseline"] == pytest.approx(0.5) and s["lr_sensitivity"]["qknorm"] is None
    assert s["lr_sensitivity_detail"]["qknorm"]["incomplete"] == [{"seed": 0, "lr": 1e-1, "status": "cut"}]
    assert s["checks"]["lr_sensitivity_ratio"]["passed"] is None
    table = study.format_table(_summary(runs, [1e-3, 1e-1]))
    assert "- (1 cut)" in table and "cut by the time budget: 1 run," in table


def test_out_dir_that_cannot_be_created_is_one_line(capsys):
    assert main(["study", "--quick", "--out", "/dev/null/study"]) == 2
    err = capsys.readouterr().err
    assert "--out /dev/null/study: cannot create the output directory" in err and err.count("\n") == 1


def test_every_plot_has_a_title_labelled_axes_with_units_and_a_legend(monkeypatch):
    """The report is for a person: each figure of write_plots (drawn from a real study's summary and run
    histories, bench/results/study_cpu_2026-11-30/default) has a title, x/y labels, units on the loss/logit axes,
    and a legend naming the variants."""
    import pathlib

    from qknorm.study import plots

    out = pathlib.Path(__file__).resolve().parents[2] / "bench" / "results" / "study_cpu_2026-11-30" / "default"
    summary = json.loads((out / "summary.json").read_text())
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    plots.write_plots(out, study.StudySummary.from_json(summary), hist={})  # histories are not committed
    assert len(figures) == 4
    for fig in figures[:2]:  # loss vs LR, max logit vs LR: every variant in the legend
        ax = fig.axes[0]
        assert ax.get_title() and "learning rate" in ax.get_xlabel()
        assert "(" in ax.get_ylabel(), ax.get_ylabel()  # a unit: (nats/token) or (unitless)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert all(any(v in t for t in legend) for v in summary["config"]["variants"]), legend


LEADERBOARD_KEYS = ("variant", "optimizer", "best_val_loss", "best_val_loss_ci95", "lr_sensitivity",
                    "lr_sensitivity_ci95", "max_attn_logit_top_lr", "step_time_ratio")


def test_tiny_stabilizer_study_end_to_end(tmp_path, capsys):
    """The acceptance command's shape at CI size (3 variants x 2 optimizers x 2 LRs x 2 seeds x 3 steps, the smoke
    model): a complete leaderboard of finite numbers, the optimizer on every run, a report led by a sortable
    leaderboard that marks optima at a grid edge, runs listed with their optimizer; the same command again reuses
    every run, Muon's included."""
    out = tmp_path / "s"
    argv = ["study", "--profile", "smoke", "--variants", "baseline,softcap,qk_clip", "--optimizers", "adamw,muon",
            "--lrs", "1e-2,1e-1", "--steps", "3", "--seeds", "2", "--workers", "1", "--device", "cpu", "--out",
            str(out)]
    assert main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert len(s["runs"]) == 24 and {r["optimizer"] for r in s["runs"]} == {"adamw", "muon"}
    assert {(r["variant"], r["optimizer"]) for r in s["leaderboard"]} == {
        (v, o) for v in ("baseline", "softcap", "qk_clip") for o in ("adamw", "muon")}
    for row in s["leaderboard"]:
        for key in LEADERBOARD_KEYS[2:]:
            value = row[key]
            assert value is not None, (row["variant"], row["optimizer"], key)
            assert all(math.isfinite(x) for x in (value if isinstance(value, list) else [value])), (row, key)
        assert len(row["best_val_loss_ci95"]) == 2 and row["best_val_loss_ci95"][0] <= row["best_val_loss"]
    assert (out / "runs" / "qk_clip_muon_lr0.1_s1.json").is_file()
    assert (out / "runs" / "qk_clip_lr0.1_s1.json").is_file()
    assert set(s["lr_sensitivity"]) == {"baseline", "softcap", "qk_clip", "baseline/muon", "softcap/muon",
                                        "qk_clip/muon"}
    assert s["config"]["optimizers"] == ["adamw", "muon"] and s["config"]["variant_training"]["qk_clip"] == {
        "qk_clip": 50.0}
    page = (out / "report.html").read_text()
    assert page.index("<h2>Leaderboard</h2>") < page.index("<h2>What this shows</h2>") < page.index("<img")
    assert '<table class="sortable">' in page and "<script>" in page and "<h3>Muon</h3>" in page
    board = page[page.index('<table class="sortable">'):page.index("<h2>What this shows</h2>")]
    assert board.count('<span class="fail">grid edge</span>') == 6  # two LRs: every best LR is at an edge
    assert "<td>qk_clip</td><td>muon</td><td>0.1</td><td>1</td>" in page  # the all-runs table names the optimizer
    capsys.readouterr()
    assert main(argv) == 0
    assert "(24 reused)" in capsys.readouterr().out
