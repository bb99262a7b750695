"""RunSummary: a training history's final loss, divergence verdict, spike scores and max logits (run_summary.py),
checked against the definitions computed here by hand."""
import dataclasses
import math

import pytest

from qknorm.metrics import judge_divergence
from qknorm.train.run_summary import max_over_history, summarize
from qknorm.train.step_record import StepRecord


def _steps(losses, grads):
    return [StepRecord(step=i, loss=l, lr=1e-3, grad_norm=g, tokens=64 * (i + 1)) for i, (l, g) in
            enumerate(zip(losses, grads))]


def test_summarize_divergence_spikes_and_max():
    calm = _steps([3.0 - 0.001 * i for i in range(150)], [1.0 + 0.01 * (i % 3) for i in range(150)])
    calm[120] = dataclasses.replace(calm[120], grad_norm=50.0)  # one spike after a calm history
    calm[10] = dataclasses.replace(calm[10], max_attn_logit=4.0)
    calm[20] = dataclasses.replace(calm[20], max_attn_logit=9.0)
    s = summarize(calm, steps=150, vocab_size=256)
    assert not s.diverged and s.max_attn_logit == 9.0 and math.isnan(s.max_output_logit)  # no logit_max recorded
    assert s.divergence == judge_divergence([r.loss for r in calm], vocab_size=256,
                                            grad_norms=[r.grad_norm for r in calm])
    assert s.final_loss == pytest.approx(sum(r.loss for r in calm[-7:]) / 7)  # last 150 // 20 = 7
    assert s.grad_spike_score_w100 == pytest.approx(100 / 140)  # 1 of 140 scored values (from the 10th)
    assert s.loss_spike_score_w100 == 0.0 and s.spike_window == 1000 and s.spike_std == 7.0
    assert not math.isnan(s.grad_spike_score)  # window 1000 scores from the 100th value on
    nan = list(calm)
    nan[50] = dataclasses.replace(nan[50], loss=math.nan)
    assert summarize(nan).diverged and summarize(nan).divergence.nonfinite_step == 50
    above = _steps([2.0 if i < 5 else 6.0 for i in range(10)], [1.0] * 10)
    assert summarize(above, vocab_size=256).divergence.reason.value == "above_uniform"
    assert summarize(above).divergence.reason.value == "rose"
    assert math.isnan(summarize([]).max_attn_logit) and not summarize([]).diverged


def test_max_over_history_counts_nan_as_infinite():
    a, b = _steps([1.0, 1.0], [1.0, 1.0])
    assert max_over_history([dataclasses.replace(a, max_attn_logit=3.0),
                             dataclasses.replace(b, max_attn_logit=math.nan)]) == math.inf
    assert max_over_history([a, dataclasses.replace(b, logit_max=2.5)], "logit_max") == 2.5
