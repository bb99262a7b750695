"""The CPU profiles' grids are backed by a measurement: the committed studies (bench/results/study_cpu_2026-11-30/)
ran exactly the profile's grid, steps and variants, and every variant's best LR is strictly inside the grid —
recomputed here from the stored runs, not read from the stored analysis. Changing a profile without measuring it
again fails this test."""
import json
import math
import re
from pathlib import Path

import pytest

from qknorm import study

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "study_cpu_2026-11-30"


@pytest.mark.parametrize("profile", ["quick", "default"])
def test_the_profile_grid_brackets_every_variant_optimum_as_measured(profile):
    stored = json.loads((RESULTS / profile / "summary.json").read_text())
    p, cfg = study.PROFILES[profile], stored["config"]
    assert tuple(cfg["lrs"]) == p.lrs and cfg["train"]["steps"] == p.steps and tuple(cfg["variants"]) == p.variants
    assert cfg["train"]["schedule"] == p.schedule and cfg["model_shape"]["d_model"] == p.shape["d_model"]
    summary = study.StudySummary.from_json(stored)
    analysis = study.analyze(summary.runs, p.variants, p.lrs, summary.seeds, cfg["model_shape"]["vocab_size"])
    for v in p.variants:
        opt = analysis.lr_sensitivity[v].optimum
        assert opt.inside is True and p.lrs[0] < opt.best_lr < p.lrs[-1], (v, opt)
        assert stored["optimum"][v]["optimum_inside_grid"] is True


def test_profile_descriptions_state_what_the_profile_runs():
    for name in ("quick", "default", "gpu", "stabilizers", "stabilizers_gpu", "scaling", "scaling_gpu"):
        p = study.PROFILES[name]
        m = re.search(r"(\d+) LRs ([0-9.e-]+)\.\.([0-9.e-]+)", p.description)
        assert m and (int(m[1]), float(m[2]), float(m[3])) == (len(p.lrs), p.lrs[0], p.lrs[-1]), p.description
        assert f"{p.steps} steps" in p.description
        assert ("baseline vs qknorm" in p.description) == (p.variants == ("baseline", "qknorm"))


def test_the_scaling_grid_brackets_every_size_optimum_as_measured():
    """bench/results/scaling_study_cpu_2026-12-07 ran the scaling profile's sizes and grid; each (variant, size)'s best
    LR, recomputed from the stored runs, is strictly inside the grid (d128_l4: seed 0; the run was partial)."""
    from qknorm.study.curve import loss_curve, optimum

    stored = json.loads((RESULTS.parent / "scaling_study_cpu_2026-12-07" / "summary.json").read_text())
    p = study.PROFILES["scaling"]
    assert [s["name"] for s in stored["config"]["sizes"]] == [s.name for s in p.sizes]
    for size, cfg in zip(p.sizes, stored["config"]["sizes"]):
        assert {k: cfg["model_shape"][k] for k in size.shape} == dict(size.shape)
        assert tuple(cfg["lrs"]) == p.lrs
        for v in p.variants:
            runs = [study.RunRecord.from_json(r) for r in stored["runs"]
                    if r["size"] == size.name and r["variant"] == v]
            opt = optimum(loss_curve(runs, p.lrs, math.log(256)))
            assert opt.inside is True and p.lrs[0] < opt.best_lr < p.lrs[-1], (size.name, v, opt)
