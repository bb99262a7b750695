"""The scaling study (study/scaling*.py): the slope fit against numpy's least squares, the trend stated only where
its interval excludes zero, the profiles' sizes, and a whole scaling study (fake runs, then real tiny ones through
the CLI) writing every summary field, the report with its figures, and resuming."""
import json
import math

import numpy as np
import pytest

from qknorm import ConfigError, study
from qknorm.study import RunHistory, RunRecord
from qknorm.study.leaderboard import LeaderboardRow
from qknorm.study.scaling_config import ScalingConfig
from qknorm.study.scaling import (ScalingAnalysis, ScalingFit, ScalingRow, fit_slope, slope_difference,
                                  trend_sentences)
from qknorm.study.scaling_plan import params_nonembed
from tests.helpers.cli import run_cli

ROW_FIELDS = {"variant", "size", "params_nonembed", "tokens", "best_lr", "best_val_loss", "lr_sensitivity",
              "lr_sensitivity_ci95", "max_attn_logit_top_lr"}


def test_fit_slope_matches_numpy_least_squares_and_t_interval():
    rng = np.random.default_rng(0)
    params = np.repeat([3e4, 2e5, 1e6], 2)
    y = 0.1 + 0.05 * np.log10(params) + rng.normal(0, 0.01, size=6)
    fit = fit_slope(list(zip(params.tolist(), y.tolist())))
    coef, cov = np.polyfit(np.log10(params), y, 1, cov=True)  # cov scaled by SSE / (n - 2)
    assert fit.slope == pytest.approx(coef[0], rel=1e-9)
    assert fit.intercept == pytest.approx(coef[1], rel=1e-9)
    half = 2.7764451051977987 * math.sqrt(cov[0, 0])  # t(0.975, df=4), from tables
    assert fit.slope_ci95 == pytest.approx((coef[0] - half, coef[0] + half), rel=1e-7)
    assert (fit.df, fit.n_points, fit.n_sizes) == (4, 6, 3)


def test_fit_slope_without_enough_points_has_no_interval():
    assert fit_slope([(1e4, 0.1), (1e5, 0.2)]).slope_ci95 is None  # 2 points: a line, no residual
    assert fit_slope([(1e4, 0.1), (1e4, 0.2)]).slope is None  # one size: no slope
    assert not fit_slope([(1e4, 0.1), (1e5, 0.2)]).resolved


def _analysis(baseline_ci, qknorm_ci):
    rows = tuple(ScalingRow(size=s, params_nonembed=p, tokens=10, board=LeaderboardRow(variant=v, optimizer="adamw"))
                 for v in ("baseline", "qknorm") for s, p in (("a", 10 ** 4), ("b", 10 ** 5)))
    t4 = 2.7764451051977987
    fits = {k: ScalingFit(slope=sum(ci) / 2, slope_ci95=ci, slope_se=(ci[1] - ci[0]) / 2 / t4, df=4)
            for k, ci in (("baseline", baseline_ci), ("qknorm", qknorm_ci))}
    return ScalingAnalysis(rows=rows, fits=fits, difference=slope_difference("baseline", fits["baseline"], "qknorm",
                                                                             fits["qknorm"]))


def test_trend_is_stated_only_where_the_interval_excludes_zero():
    text = " ".join(trend_sentences(_analysis((0.05, 0.15), (-0.02, 0.03))))
    assert "baseline: LR sensitivity grows with model size" in text
    assert "qknorm: the trend of LR sensitivity with size is not resolved at these sizes" in text
    assert "grows faster with size than with it" in text  # difference 0.0925 +- 0.0559: apart from zero
    text = " ".join(trend_sentences(_analysis((-0.01, 0.15), (-0.02, 0.03))))
    assert "grows" not in text.replace("grows faster without QK-norm than with it is not resolved", "")
    assert text.count("not resolved at these sizes") == 3


def test_scaling_profiles_span_16x_with_growing_depth_and_a_gpu_twin():
    for name, top in (("scaling", 2e6), ("scaling_gpu", 1.3e8)):
        splan = study.make_scaling_plan(name)
        counts = [params_nonembed(p.shape, 256) for p in splan.plans]
        depth = [p.shape["n_layers"] for p in splan.plans]
        assert len(counts) >= 3 and counts[-1] / counts[0] >= 16 and max(counts) <= top
        assert counts == sorted(counts) and depth == sorted(depth) and depth[0] < depth[-1]
        assert all(len(p.seeds) >= 2 and p.variants == ("baseline", "qknorm") for p in splan.plans)
        assert all(p.lrs == study.WORTSMAN_GRID for p in splan.plans)
    assert study.device_profile("scaling", "cuda") == "scaling_gpu"


def test_params_nonembed_counts_the_blocks_by_hand():
    d, hd, layers = 64, 32, 3  # llama block: q, k, v, o + SwiGLU + 2 norms a layer, a final norm
    shape = dict(d_model=d, n_layers=layers, n_heads=2, n_kv_heads=2, head_dim=hd, d_ff=4 * d)
    per_layer = 4 * d * 2 * hd + 3 * d * 4 * d + 2 * d
    assert params_nonembed(shape, 256) == layers * per_layer + d
    assert params_nonembed(shape, 256, "qknorm") == layers * (per_layer + 2 * hd) + d  # per-head q, k gains


def test_make_scaling_plan_lrs_override_and_errors():
    splan = study.make_scaling_plan("scaling", steps=5, lrs=(1e-3, 3e-2), seeds=2)
    assert all(p.lrs == (1e-3, 3e-2) and p.train.steps == 5 for p in splan.plans)
    assert [p.shape["d_model"] for p in splan.plans] == [32, 64, 128]
    with pytest.raises(ConfigError, match="profile"):
        study.make_scaling_plan("quick")


def size_runner(spec):
    """A fake run whose loss curve steepens with model width for the baseline and stays flat for qknorm."""
    width = spec.model.d_model
    steep = (width / 16) if spec.variant == "baseline" else 1.0
    val = 3.0 - 0.01 * width ** 0.5 + 0.05 * steep * abs(math.log10(spec.lr / 1e-2)) + 0.01 * spec.seed
    return RunRecord(variant=spec.variant, lr=spec.lr, seed=spec.seed, init_loss=5.5, final_loss=val, val_loss=val,
                     max_attn_logit=width * spec.lr * (100 if spec.variant == "baseline" else 1),
                     steps=spec.train.steps,
                     history=RunHistory(step=[0, 1], loss=[5.5, val], stats_step=[0], max_attn_logit=[1.0]))


def test_scaling_study_writes_every_field_the_report_and_resumes(tmp_path, monkeypatch):
    from qknorm.study import driver, report
    for module in (driver, report):  # each size's own plots are the study's (tested there): only the scaling figures
        monkeypatch.setattr(module, "plots_available", lambda: False)
    out = tmp_path / "s"
    splan = study.make_scaling_plan("scaling_smoke")
    lines = []
    summary = study.run_scaling_study(splan, out, runner=size_runner, log=lines.append)
    assert "36 runs in all, 36 to train" in lines[0] and "estimate" not in lines[0]  # a fake runner: no estimate
    data = json.loads((out / "summary.json").read_text())
    assert len(data["scaling"]) == 6 and all(ROW_FIELDS <= set(r) for r in data["scaling"])
    assert all(r["lr_sensitivity"] is not None and r["lr_sensitivity_ci95"] is not None for r in data["scaling"])
    assert set(data["scaling_fit"]) == {"baseline", "qknorm"}
    for fit in data["scaling_fit"].values():
        assert fit["slope"] is not None and len(fit["slope_ci95"]) == 2
    base, qk = summary.analysis.fits["baseline"], summary.analysis.fits["qknorm"]
    assert base.resolved and base.slope > 0 and abs(qk.slope) < 1e-9  # the fake's built-in trend, recovered
    assert {r["size"] for r in data["runs"]} == {"d16_l1", "d32_l2", "d64_l2"} and len(data["runs"]) == 36
    # the typed config reads back and writes out key for key (a key written that ScalingConfig lacks fails here)
    assert json.dumps(ScalingConfig.from_json(data["config"]).to_json()) == json.dumps(data["config"])
    assert summary.config.sizes[0].dir == "sizes/d16_l1" and summary.config.train == splan.first.train
    assert data["scaling"][0]["tokens"] == 3 * 2 * 16
    assert set(data["lr_sensitivity"]["baseline"]) == {"d16_l1", "d32_l2", "d64_l2"}
    html = (out / "report.html").read_text()
    assert html.index("scaling_loss_vs_lr.png") < html.index("What this shows")  # the figure leads
    assert "baseline: LR sensitivity grows with model size" in html
    assert "qknorm: the trend of LR sensitivity with size is not resolved at these sizes" in html
    assert "Max attention logit of baseline at the top LR (largest over seeds), by size: d16_l1 160," in html
    assert summary.config.plots is not False and "data:image/png;base64" in html
    for name in ("scaling_loss_vs_lr.png", "scaling_sensitivity.png", "sizes/d16_l1/report.html"):
        assert (out / name).stat().st_size > 1000
    assert "d64_l2" in study.format_scaling_table(summary)
    calls = []
    again = study.run_scaling_study(splan, out, runner=lambda s: calls.append(s) or size_runner(s),
                                    report=False, log=lambda _: None, max_minutes=60)
    assert calls == [] and again.analysis == summary.analysis  # every run reused
    assert study.read_scaling_summary(out).analysis == summary.analysis  # what a re-rendered report shows
    other = study.make_scaling_plan("scaling_smoke", seeds=1)
    with pytest.raises(ValueError, match="different study"):
        study.run_scaling_study(other, out, runner=size_runner, log=lambda _: None)
    lines = []
    forced = study.run_scaling_study(other, out, runner=size_runner, force=True, report=False, log=lines.append)
    assert "18 runs in all, 18 to train" in lines[0] and len(forced.sizes[0].summary.runs) == 6
    assert all(f.slope_ci95 is not None for f in forced.analysis.fits.values())  # 1 seed x 3 sizes: df 1


def test_cli_scaling_smoke_trains_real_runs_and_reports_without_matplotlib(tmp_path, capsys, monkeypatch):
    from qknorm.study import driver, report, scaling_report
    for module in (driver, report, scaling_report):  # matplotlib "missing": the reports say so (and it is quicker)
        monkeypatch.setattr(module, "plots_available", lambda: False)
    out = tmp_path / "cli"
    code, stdout, err = run_cli("study", ["--profile", "scaling_smoke", "--lrs", "1e-3,1e-1", "--steps", "2",
                                          "--out", str(out)], capsys)
    assert code == 0, err
    assert err[0].startswith("qknorm scaling study") and "24 to train; estimate ~" in err[0]  # before any run
    assert "d16_l1 8 runs" in err[0] and "[  1/8]" not in err[0]
    assert "slope of LR sensitivity per 10x parameters, baseline" in stdout and "(no plots)" in stdout
    assert "No plots: matplotlib is not installed" in (out / "report.html").read_text()
    data = json.loads((out / "summary.json").read_text())
    assert [r["params_nonembed"] for r in data["scaling"][::2]] == [
        params_nonembed(p.shape, 256) for p in study.make_scaling_plan("scaling_smoke").plans]
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli("study", ["--profile", "scaling_smoke", "--out", str(tmp_path / "file")], capsys)
    assert code == 2 and len(err) == 1 and "--out" in err[0] and "not a directory" in err[0]
