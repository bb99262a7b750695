"""What a study's runs say (study/analysis.py, curve.py) and how the table and report say it: failed runs are
left out of LR sensitivity (not counted as divergence), an optimum at a grid edge is flagged, and the spread
over seeds is reported. Numbers are worked by hand."""
import json

import pytest

from qknorm import study
from qknorm.study.report import render_html
from qknorm.study.study_config import StudyConfig

L0 = 5.0


def _run(variant, lr, val, *, seed=0, status="ok", logit=10.0, error=None):
    return study.RunRecord(variant=variant, lr=lr, seed=seed, init_loss=L0, final_loss=val, val_loss=val,
                           max_attn_logit=logit, status=status, error=error)


def _summary(runs, lrs, seeds=(0,), variants=("baseline", "qknorm")):
    analysis = study.analyze(runs, variants, lrs, seeds, 256)
    return study.StudySummary(runs=tuple(runs), analysis=analysis, config=StudyConfig.from_json({
        "lrs": list(lrs), "variants": list(variants), "seeds": list(seeds), "profile": "quick",
        "label": "quick profile", "model_shape": {"vocab_size": 256}, "data": {"source": "test"},
        "train": {"steps": 10, "schedule": "constant", "warmup_steps": 1, "batch_size": 16, "seq_len": 64,
                  "beta2": 0.95, "weight_decay": 0.0, "clip": 1.0, "dtype": "fp32", "stats_every": 10},
        "stats_seqs": 4}))


def test_a_failed_run_is_left_out_of_lr_sensitivity_not_counted_as_l0():
    lrs = (1e-3, 1e-2, 1e-1)
    runs = [_run("baseline", 1e-3, 2.2), _run("baseline", 1e-2, 2.0),
            _run("baseline", 1e-1, None, status="failed", error="RuntimeError: boom"),
            # qknorm: a measured divergence at 1e-1 counts as l0: (0.2 + 0 + 3.0) / 3
            _run("qknorm", 1e-3, 2.2), _run("qknorm", 1e-2, 2.0), _run("qknorm", 1e-1, None, status="diverged")]
    summary = _summary(runs, lrs)
    s = summary.to_json()
    assert s["lr_sensitivity"]["baseline"] is None
    assert s["lr_sensitivity_detail"]["baseline"]["incomplete"] == [{"seed": 0, "lr": 1e-1, "status": "failed"}]
    assert s["lr_sensitivity"]["qknorm"] == pytest.approx(3.2 / 3)
    assert s["checks"]["lr_sensitivity_ratio"]["passed"] is None
    table = study.format_table(summary)
    row = next(line for line in table.splitlines() if line.startswith("baseline"))
    assert "- (1 failed)" in row and row.split()[-3:] == ["0/3", "1", "0"]  # diverged 0/3, failed 1, cut 0
    assert "failed (1 run, left out of LR sensitivity; not divergence):" in table
    assert "baseline_lr0.1_s0: RuntimeError: boom" in table
    page = render_html(summary, {})
    assert "1 run failed" in page and "Runs that diverged (non-finite or exploding loss): qknorm 1." in page


def test_optimum_inside_the_grid_or_at_an_edge_is_said_everywhere():
    lrs = (1e-3, 1e-2, 1e-1)
    runs = [_run("baseline", 1e-3, 2.2), _run("baseline", 1e-2, 2.0), _run("baseline", 1e-1, 2.5),
            _run("qknorm", 1e-3, 1.9), _run("qknorm", 1e-2, 2.0), _run("qknorm", 1e-1, 2.1)]
    summary = _summary(runs, lrs)
    s = json.loads(json.dumps(summary.to_json(), allow_nan=False))
    assert s["optimum"]["baseline"] == {"best_lr": 1e-2, "best_loss": 2.0, "optimum_inside_grid": True, "note": ""}
    assert s["optimum"]["qknorm"]["best_lr"] == 1e-3 and s["optimum"]["qknorm"]["optimum_inside_grid"] is False
    assert "lowest grid LR" in s["optimum"]["qknorm"]["note"]
    assert "qknorm" in s["checks"]["lr_sensitivity_ratio"]["note"]  # the ratio depends on the grid's start
    table = study.format_table(summary)
    rows = {line.split()[0]: line for line in table.splitlines()[2:4]}
    assert "inside grid" in rows["baseline"] and "AT GRID EDGE" in rows["qknorm"]
    assert "note: qknorm: best at the lowest grid LR" in table
    assert "at a grid edge" in render_html(summary, {})
    # a neighbour that measured nothing: cannot tell
    cut = [r if (r.variant, r.lr) != ("baseline", 1e-1) else _run("baseline", 1e-1, None, status="cut")
           for r in runs]
    assert study.analyze(cut, ("baseline",), lrs, (0,), 256).lr_sensitivity["baseline"].optimum.inside is None


def test_spread_over_seeds_in_summary_table_and_report():
    lrs = (1e-3, 1e-2, 1e-1)
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.1), (2, 0.3)):
        for v in ("baseline", "qknorm"):
            runs += [_run(v, 1e-3, 2.5, seed=seed), _run(v, 1e-2, 2.0 + shift, seed=seed),
                     _run(v, 1e-1, 2.6, seed=seed)]
    summary = _summary(runs, lrs, seeds=(0, 1, 2))
    d = summary.to_json()["lr_sensitivity_detail"]["baseline"]
    # per seed: (0.5 + 0 + 0.6)/3, (0.4 + 0 + 0.5)/3, (0.2 + 0 + 0.3)/3
    assert d["per_seed"] == {"0": pytest.approx(1.1 / 3), "1": pytest.approx(0.9 / 3), "2": pytest.approx(0.5 / 3)}
    assert d["value"] == pytest.approx(2.5 / 9) and d["n_seeds"] == 3
    assert (d["min_over_seeds"], d["max_over_seeds"]) == (pytest.approx(0.5 / 3), pytest.approx(1.1 / 3))
    at = next(p for p in d["loss_by_lr"] if p["lr"] == 1e-2)
    assert at["n"] == 3
    assert (at["mean"], at["lo"], at["hi"]) == (pytest.approx(6.4 / 3), pytest.approx(2.0), pytest.approx(2.3))
    table = study.format_table(summary)
    assert "mean [min-max] over 3 seeds" in table
    assert "2.133 [2.000-2.300] (0.01)" in table and "0.278 [0.167-0.367]" in table
    assert "[0.167–0.367]" in render_html(summary, {})
