"""A training run's summary (`RunSummary`), computed from its per-step records by `summarize(history)`.

    s = summarize(result.history, steps=cfg.steps, vocab_size=V)
    s.final_loss, s.diverged, s.divergence, s.max_attn_logit, s.grad_spike_score_w100, ...

* final loss: the mean train loss of the last max(1, steps // 20) steps (NaN/inf propagate);
* divergence: `metrics.judge_divergence` of the losses and gradient norms (`vocab_size`: the model's, for the
  uniform-prediction ceiling);
* max attention logit and max output logit over the steps that ran a stats pass (NaN counts as +inf; NaN when
  none did);
* the OLMo 2 spike score (arXiv 2501.00656: percent of values >= 7 std from the rolling mean of the previous
  values; NaN when the run is too short to score) of the loss and gradient-norm series: `*_spike_score` with
  OLMo 2's window of 1000 (scored from the 100th value on), `*_spike_score_w100` with a window of 100 (scored from
  the 10th), better suited to runs of a few hundred steps.

`TrainResult.summary` is this record; the study (study/run.py) reads its fields.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

from ..metrics import DivergenceVerdict, judge_divergence, spike_score
from .step_record import StepRecord

__all__ = ["RunSummary", "summarize", "final_loss", "max_over_history", "SPIKE_WINDOW", "SPIKE_WINDOW_SHORT",
           "SPIKE_STD"]

SPIKE_WINDOW, SPIKE_WINDOW_SHORT, SPIKE_STD = 1000, 100, 7.0  # OLMo 2's window and threshold; a short-run window


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSummary:
    """Run-level diagnostics of a training history (module docstring)."""

    final_loss: float
    divergence: DivergenceVerdict
    max_attn_logit: float  # NaN: no stats pass ran; +inf: a non-finite logit
    max_output_logit: float
    loss_spike_score: float  # window SPIKE_WINDOW (NaN: too short to score)
    loss_spike_score_w100: float  # window SPIKE_WINDOW_SHORT
    grad_spike_score: float
    grad_spike_score_w100: float
    spike_window: int = SPIKE_WINDOW
    spike_std: float = SPIKE_STD

    @property
    def diverged(self) -> bool:
        return self.divergence.diverged


def max_over_history(history: Sequence[StepRecord], field: str = "max_attn_logit") -> float:
    """Max of `field` over the records that have it (NaN counts as +inf); NaN when no record has it."""
    values = [getattr(r, field) for r in history]
    return max((math.inf if v != v else v for v in values if v is not None), default=math.nan)


def final_loss(history: Sequence[StepRecord], steps: int) -> float:
    """Mean train loss of the last max(1, steps // 20) recorded steps (NaN/inf propagate); NaN if none."""
    losses = [r.loss for r in history]
    if not losses:
        return math.nan
    tail = losses[-max(1, steps // 20):]
    return float(sum(tail) / len(tail))


def summarize(history: Sequence[StepRecord], *, steps: Optional[int] = None,
              vocab_size: Optional[int] = None) -> RunSummary:
    """The `RunSummary` of per-step records (module docstring); `steps`: the run's planned steps (default: as
    many as recorded) decide the final-loss window."""
    steps = steps if steps is not None else len(history)
    losses = [r.loss for r in history]
    grads = [r.grad_norm for r in history]
    return RunSummary(
        final_loss=final_loss(history, steps),
        divergence=judge_divergence(losses, vocab_size=vocab_size, grad_norms=grads),
        max_attn_logit=max_over_history(history), max_output_logit=max_over_history(history, "logit_max"),
        loss_spike_score=spike_score(losses, SPIKE_WINDOW, SPIKE_STD),
        loss_spike_score_w100=spike_score(losses, SPIKE_WINDOW_SHORT, SPIKE_STD),
        grad_spike_score=spike_score(grads, SPIKE_WINDOW, SPIKE_STD),
        grad_spike_score_w100=spike_score(grads, SPIKE_WINDOW_SHORT, SPIKE_STD))
