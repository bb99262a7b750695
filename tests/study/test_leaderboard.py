"""The leaderboard's math on hand-made run records (study/leaderboard.py through analysis.analyze): best loss and
LR sensitivity with their t intervals, logit / entropy / log Z drift at the top LR, the step-time ratio with
Welch's interval, refused and incomplete arms. Every expected number is worked by hand in the comments."""
import json
import math

import pytest

from qknorm import study
from qknorm.study import RunRecord

L0 = 5.0
T1 = 12.7062  # t(0.975, 1): two seeds
LRS = (1e-3, 1e-2)


def _run(variant, lr, seed, val, *, opt="adamw", status="ok", logit=10.0, entropy=2.0, z_end=6.0, cpu=10.0,
         error=None):
    return RunRecord(variant=variant, lr=lr, seed=seed, optimizer=opt, init_loss=L0, final_loss=val, val_loss=val,
                     max_attn_logit=logit, status=status, attn_entropy=entropy, attn_entropy_min_layer=entropy / 2,
                     log_z_start=5.5, log_z_end=z_end, step_ms=3 * cpu, step_cpu_ms=cpu, error=error)


def _board(runs, variants=("baseline", "qk_clip"), optimizers=("adamw",), softcaps=None):
    a = study.analyze(runs, variants, LRS, (0, 1), 256, optimizers, softcaps)
    return {r.label: r for r in a.leaderboard}, a


def _baseline(opt="adamw", cpu=(10.0, 11.0, 10.0, 11.0)):
    return [
        # best LR 1e-3: val 2.0, 2.2 -> mean 2.1, sd 0.1414, se 0.1
        _run("baseline", 1e-3, 0, 2.0, opt=opt, cpu=cpu[0]), _run("baseline", 1e-3, 1, 2.2, opt=opt, cpu=cpu[1]),
        # top LR 1e-2: logits 500, 800; entropies 1.0, 1.4; log Z 5.5 -> 7.5, 8.5 (drift 2, 3)
        _run("baseline", 1e-2, 0, 2.5, opt=opt, logit=500.0, entropy=1.0, z_end=7.5, cpu=cpu[2]),
        _run("baseline", 1e-2, 1, 2.9, opt=opt, logit=800.0, entropy=1.4, z_end=8.5, cpu=cpu[3]),
    ]


def test_best_loss_sensitivity_and_top_lr_numbers_by_hand():
    rows, _ = _board(_baseline(), variants=("baseline",))
    b = rows["baseline"]
    assert (b.variant, b.optimizer, b.best_lr, b.top_lr, b.n_seeds, b.status) == ("baseline", "adamw", 1e-3, 1e-2,
                                                                                  2, "ok")
    assert b.best_val_loss == pytest.approx(2.1)
    assert b.best_val_loss_ci95 == pytest.approx((2.1 - T1 * 0.1, 2.1 + T1 * 0.1), abs=1e-4)
    # sensitivity per seed: (0 + 0.5) / 2 = 0.25 and (0 + 0.7) / 2 = 0.35 -> 0.30, sd 0.0707, se 0.05
    assert b.lr_sensitivity == pytest.approx(0.30)
    assert b.lr_sensitivity_ci95 == pytest.approx((0.30 - T1 * 0.05, 0.30 + T1 * 0.05), abs=1e-4)
    assert (b.max_attn_logit_top_lr, b.max_attn_logit_top_lr_min) == (800.0, 500.0)
    # entropy 1.0, 1.4: mean 1.2, se 0.2; lowest layer (entropy / 2 here): 0.5, 0.7 -> 0.6
    assert b.attn_entropy_top_lr == pytest.approx(1.2)
    assert b.attn_entropy_top_lr_ci95 == pytest.approx((1.2 - T1 * 0.2, 1.2 + T1 * 0.2), abs=1e-4)
    assert b.attn_entropy_min_layer_top_lr == pytest.approx(0.6)
    assert b.log_z_drift_top_lr == pytest.approx(2.5)  # (2 + 3) / 2
    assert b.step_time_ratio == 1.0 and b.step_time_basis == "cpu"  # the reference of its optimizer
    assert b.step_ms == pytest.approx((10 * 11 * 10 * 11) ** 0.25)  # geometric mean of the runs' CPU ms


def test_step_time_ratio_is_against_the_baseline_of_the_same_optimizer():
    clip = [_run("qk_clip", lr, s, 2.1, cpu=c) for (lr, s), c in zip(
        ((1e-3, 0), (1e-3, 1), (1e-2, 0), (1e-2, 1)), (13.0, 14.0, 13.0, 14.0))]
    muon = _baseline("muon", cpu=(20.0, 22.0, 20.0, 22.0))  # a slower baseline with the other optimizer
    rows, _ = _board(_baseline() + clip + muon, optimizers=("adamw", "muon"))
    r = rows["qk_clip"]
    # geometric means sqrt(13 * 14) / sqrt(10 * 11), against the AdamW baseline (not the Muon one at 2x)
    want = math.sqrt(13 * 14 / (10 * 11))
    assert r.step_time_ratio == pytest.approx(want)
    lo, hi = r.step_time_ratio_ci95
    assert lo < want < hi and lo > 1.0  # these samples separate: every clip run is slower
    assert rows["baseline/muon"].step_time_ratio == 1.0
    assert "qk_clip/muon" in rows and rows["qk_clip/muon"].best_val_loss is None  # no runs: nothing measured


def test_diverged_runs_count_as_l0_and_nonfinite_logits_are_inf():
    runs = _baseline() + [
        _run("qk_clip", 1e-3, 0, 2.3), _run("qk_clip", 1e-3, 1, 2.5),
        _run("qk_clip", 1e-2, 0, 2.0, logit=40.0), _run("qk_clip", 1e-2, 1, None, status="diverged", logit=None)]
    runs[-1] = RunRecord(**{**runs[-1].__dict__, "max_attn_logit_nonfinite": True})
    rows, a = _board(runs)
    r = rows["qk_clip"]
    # the curve: 1e-3 mean 2.4; 1e-2 = (2.0 + l0 5.0) / 2 = 3.5 -> best 1e-3 (at the grid edge)
    assert r.best_lr == 1e-3 and r.best_val_loss == pytest.approx(2.4) and r.optimum_inside_grid is False
    assert r.max_attn_logit_top_lr == math.inf and r.max_attn_logit_top_lr_min == 40.0 and r.diverged == 1
    payload = json.dumps(a.to_json(), allow_nan=False)  # strict JSON
    back = study.StudyAnalysis.from_json(json.loads(payload)).leaderboard
    assert back == a.leaderboard  # read back exactly (inf as "inf", intervals as pairs)


def test_refused_and_incomplete_arms():
    refused = [_run("qk_clip", lr, s, None, status="refused", logit=None,
                    error="refused: qk_clip=50 cannot act on sigma_reparam=True projections")
               for lr in LRS for s in (0, 1)]
    rows, _ = _board(_baseline() + refused)
    r = rows["qk_clip"]
    assert r.status == "refused" and "sigma_reparam" in r.note and r.best_val_loss is None
    failed = [_run("qk_clip", 1e-3, 0, 2.3), _run("qk_clip", 1e-3, 1, 2.5), _run("qk_clip", 1e-2, 0, 2.6),
              _run("qk_clip", 1e-2, 1, None, status="failed", error="RuntimeError: boom")]
    rows, _ = _board(_baseline() + failed)
    r = rows["qk_clip"]
    # seed 1 misses its 1e-2 run: the sensitivity is seed 0's alone, (0 + 0.3) / 2, with no interval
    assert r.status == "incomplete" and r.lr_sensitivity == pytest.approx(0.15) and r.lr_sensitivity_ci95 is None
    assert "1 seed(s)" in r.note


def test_softcap_is_carried_for_the_report():
    runs = _baseline() + [_run("softcap", lr, s, 2.2, logit=1e4) for lr in LRS for s in (0, 1)]
    rows, _ = _board(runs, variants=("baseline", "softcap"), softcaps={"baseline": None, "softcap": 50.0})
    assert rows["softcap"].attn_softcap == 50.0 and rows["baseline"].attn_softcap is None
