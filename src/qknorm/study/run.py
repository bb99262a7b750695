"""One run of a study: train the `RunSpec` and measure it (`run_one` -> `RunRecord` with its history).

Measured per run (qknorm.train.loop.train): initial loss, final train loss, validation loss, max attention
logit over the run (exact, from the loop's stats pass), divergence (NaN/Inf or final loss above the initial
one), the OLMo 2 spike score of the loss and gradient-norm series (7 std; windows 100 and 1000). A run that
raises comes back as a failed record with its error text; a run whose deadline (the study's time budget)
passes is stopped and marked `cut` (records.py: RunStatus).
"""
from __future__ import annotations

import math
import time
import traceback
from typing import Any, Dict, Optional, Tuple

from ..train.loop import train
from ..train.tokens import TokenData, load_tokens
from .records import RunHistory, RunRecord, RunSpec, RunStatus, SpikeScores, finite_or_none

__all__ = ["run_one", "failed_record", "interrupted"]

_DATA_CACHE: Dict[Tuple[Optional[str], Optional[str]], TokenData] = {}


def _load_data(data: Optional[str], tokenizer: Optional[str]) -> TokenData:
    """The spec's tokens, cached per worker process (one study reads one data source)."""
    key = (data, tokenizer)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_tokens(data, tokenizer=tokenizer)
    return _DATA_CACHE[key]


def failed_record(spec_or_rec: Any, error: str, t0: float, trace: Optional[str] = None, *,
                  status: RunStatus = RunStatus.FAILED) -> RunRecord:
    """The record of a run that measured nothing: it raised or its worker died (failed), or the time budget
    skipped it (cut)."""
    return RunRecord(variant=spec_or_rec.variant, lr=spec_or_rec.lr, seed=spec_or_rec.seed, status=status,
                     time_s=round(time.perf_counter() - t0, 2), error=error, traceback=trace, history=RunHistory())


def run_one(spec: RunSpec) -> RunRecord:
    """Train the run `spec` describes; return its record (with its per-step history attached)."""
    import torch

    t0 = time.perf_counter()
    deadline = spec.deadline
    if deadline is not None and time.time() > deadline:
        return failed_record(spec, "skipped: the study's time budget (--max-minutes) was spent", t0,
                             status=RunStatus.CUT)
    try:
        data = _load_data(spec.data, spec.tokenizer)
        torch.manual_seed(spec.train.seed)
        stop = (lambda _r: time.time() > deadline) if deadline is not None else None
        res = train(spec.model, spec.train, data, callback=stop)
    except Exception as e:  # recorded, never fatal to the study
        return failed_record(spec, f"{type(e).__name__}: {e}", t0, trace=traceback.format_exc(limit=4))
    status, error, stop_reason = _outcome(res.diverged, res.stop_reason, res.steps_done, spec.train.steps)
    s = res.summary
    return RunRecord(
        variant=spec.variant, lr=spec.lr, seed=spec.seed, init_loss=finite_or_none(res.init_loss),
        final_loss=finite_or_none(res.final_loss), val_loss=finite_or_none(res.val_loss),
        max_attn_logit=finite_or_none(res.max_attn_logit),
        max_attn_logit_nonfinite=not math.isfinite(res.max_attn_logit), status=status,
        steps=res.steps_done, time_s=round(time.perf_counter() - t0, 2), tokens_per_s=round(res.tokens_per_s, 1),
        spike_score=SpikeScores(loss=finite_or_none(s.get("loss_spike_score_w100")),
                                grad_norm=finite_or_none(s.get("grad_spike_score_w100")),
                                loss_w1000=finite_or_none(s.get("loss_spike_score")),
                                grad_norm_w1000=finite_or_none(s.get("grad_spike_score"))),
        error=error, stop_reason=stop_reason, history=RunHistory.from_steps(res.history))


def _outcome(diverged: bool, stop_reason: Optional[str], steps_done: int,
             steps: int) -> Tuple[RunStatus, Optional[str], Optional[str]]:
    """(status, error, stop_reason) of a finished `train` call: a measured divergence (non-finite or exploding
    loss, the loop's rule) is `diverged`; a stop by the study's deadline before the last step is `cut`; a
    stop by a signal (SIGINT/SIGTERM: the study is being interrupted) or for any other reason is `failed`."""
    if diverged:
        return RunStatus.DIVERGED, None, stop_reason
    if stop_reason is None:
        return RunStatus.OK, None, None
    if "callback" in stop_reason:  # the deadline callback; on the last step the run is complete
        if steps_done >= steps:
            return RunStatus.OK, None, None
        return (RunStatus.CUT, f"stopped at step {steps_done}: the study's time budget (--max-minutes) was spent",
                stop_reason)
    return RunStatus.FAILED, f"stopped early: {stop_reason}", stop_reason


def interrupted(rec: RunRecord) -> bool:
    """The run was stopped by SIGINT/SIGTERM (the training loop's StopRequest): the study is being interrupted,
    and the record is not a result."""
    return rec.failed and (rec.stop_reason or "").startswith("stopped by SIG")
