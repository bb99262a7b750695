"""One run of a study: train the `RunSpec` and measure it (`run_one` -> `RunRecord` with its history).

Measured per run (qknorm.train.loop.train): initial loss, final train loss, validation loss, max attention logit
over the run (exact, from the loop's stats pass), the divergence verdict (metrics.judge_divergence, with its
numbers), the OLMo 2 spike score of the loss and gradient-norm series (7 std; windows 100 and 1000), the attention
entropy at the last stats pass (mean over layers, and the lowest layer's), the output log Z (mean logsumexp of the
output logits) at the first and last stats pass, and the median time of a step: wall time, and on CPU the process
CPU time (one torch thread per run, so on a machine shared with other jobs the CPU time is what the step costs,
where the wall time also counts the waiting). A run that raises comes back as a failed record with its error text;
a ConfigError from the loop (it refused the settings) as a refused one; a run whose deadline (the study's time
budget) passes is stopped and marked `cut` (records.py: RunStatus). A worker reads the run's data itself (from
`spec.data`, on whatever machine it runs) and checks that the tokens it read are the ones the study was planned on
(`TokenData.fingerprint()`, data/fingerprint.py, against `spec.data_fingerprint`): data that differ on a worker — a
file changed mid-study, another copy on a cluster node, the embedded corpus of another Python version — fail the
run with that reason instead of measuring something else.
"""
from __future__ import annotations

import math
import socket
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

from ..errors import ConfigError, DataError
from ..train.loop import train
from ..train.step_record import StepRecord
from ..train.stop import StopKind, StopReason
from ..data.tokens import TokenData, load_tokens
from .records import RunHistory, RunRecord, RunSpec, RunStatus, SpikeScores, finite_or_none

__all__ = ["run_one", "failed_record", "interrupted"]

_DATA_CACHE: Dict[Tuple[Optional[str], Optional[str]], Tuple[TokenData, str]] = {}


def _load_data(spec: RunSpec) -> TokenData:
    """The spec's tokens, read and fingerprinted once per worker process (one study reads one data source);
    DataError when they are not the tokens the study was planned on."""
    key = (spec.data, spec.tokenizer)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        data = load_tokens(spec.data, tokenizer=spec.tokenizer)
        _DATA_CACHE[key] = (data, data.fingerprint().short)
    data, fingerprint = _DATA_CACHE[key]
    if spec.data_fingerprint is not None and fingerprint != spec.data_fingerprint:
        what = (f"data {spec.data}" if spec.data is not None else "the embedded corpus (this Python's standard "
                "library sources)") + (f" with tokenizer {spec.tokenizer}" if spec.tokenizer else "")
        raise DataError(f"{what} read on {socket.gethostname()} gives tokens with fingerprint {fingerprint}, not the "
                        f"{spec.data_fingerprint} the study was planned on: every worker must read the same data "
                        "(same files at the same path; for the embedded corpus, the same Python version)")
    return data


def failed_record(spec_or_rec: Any, error: str, t0: float, trace: Optional[str] = None, *,
                  status: RunStatus = RunStatus.FAILED) -> RunRecord:
    """The record of a run that measured nothing: it raised or its worker died (failed), the time budget
    skipped it (cut), or the loop refused its settings (refused)."""
    return RunRecord(variant=spec_or_rec.variant, lr=spec_or_rec.lr, seed=spec_or_rec.seed,
                     optimizer=spec_or_rec.optimizer, status=status,
                     time_s=round(time.perf_counter() - t0, 2), error=error, traceback=trace, history=RunHistory())


class _StepClock:
    """The loop's per-step callback: the process CPU time at the end of each step, and the study's deadline."""

    def __init__(self, deadline: Optional[float]):
        self.deadline, self.cpu = deadline, [time.process_time()]

    def __call__(self, _record: StepRecord) -> bool:
        self.cpu.append(time.process_time())
        return self.deadline is not None and time.time() > self.deadline


def _median_ms(deltas: List[float]) -> Optional[float]:
    """The median of per-step durations in ms (robust to the steps that also ran a stats pass or validation)."""
    d = sorted(x for x in deltas if math.isfinite(x))
    if not d:
        return None
    mid = len(d) // 2
    return round(1e3 * (d[mid] if len(d) % 2 else (d[mid - 1] + d[mid]) / 2), 3)


def _step_times(history: List[StepRecord], cpu: List[float], device: str) -> Tuple[Optional[float], ...]:
    """(median wall ms, median CPU ms) of a step; CPU time only for CPU runs (a GPU run's host time is not its
    cost). The first step is left out (warm-up allocations)."""
    wall = [r.time_s for r in history]  # after step i, from the loop's start
    walls = [b - a for a, b in zip(wall[:-1], wall[1:]) if a is not None and b is not None]  # steps 1, 2, ...
    cpus = [b - a for a, b in zip(cpu[1:], cpu[2:])] if device == "cpu" else []  # cpu[i + 1]: after step i
    return _median_ms(walls), _median_ms(cpus)


def _last_stats(h: RunHistory) -> Tuple[Optional[float], Optional[float]]:
    """(mean over layers, lowest layer) of the attention entropy at the last stats pass (None if non-finite)."""
    if not h.attn_entropy or not h.attn_entropy[-1] or any(x is None for x in h.attn_entropy[-1]):
        return None, None
    last = h.attn_entropy[-1]
    return sum(last) / len(last), min(last)


def run_one(spec: RunSpec) -> RunRecord:
    """Train the run `spec` describes; return its record (with its per-step history attached)."""
    import torch

    t0, cpu0 = time.perf_counter(), time.process_time()
    deadline = spec.deadline
    if deadline is not None and time.time() > deadline:
        return failed_record(spec, "skipped: the study's time budget (--max-minutes) was spent", t0,
                             status=RunStatus.CUT)
    clock = _StepClock(deadline)
    try:
        data = _load_data(spec)
        torch.manual_seed(spec.train.seed)
        res = train(spec.model, spec.train, data, callback=clock)
    except ConfigError as e:  # the loop refused the settings before any step: a property of the combination
        return failed_record(spec, f"refused: {e}", t0, status=RunStatus.REFUSED)
    except Exception as e:  # recorded, never fatal to the study
        return failed_record(spec, f"{type(e).__name__}: {e}", t0, trace=traceback.format_exc(limit=4))
    status, error = _outcome(res.diverged, res.stop_reason, res.steps_done, spec.train.steps)
    stop = res.stop_reason if status is not RunStatus.OK else None
    s, history = res.summary, RunHistory.from_steps(res.history)
    step_ms, step_cpu_ms = _step_times(res.history, clock.cpu, spec.train.device)
    entropy, entropy_min = _last_stats(history)
    return RunRecord(
        variant=spec.variant, lr=spec.lr, seed=spec.seed, optimizer=spec.optimizer,
        init_loss=finite_or_none(res.init_loss), final_loss=finite_or_none(res.final_loss),
        val_loss=finite_or_none(res.val_loss), max_attn_logit=finite_or_none(res.max_attn_logit),
        max_attn_logit_nonfinite=not math.isfinite(res.max_attn_logit), status=status,
        steps=res.steps_done, time_s=round(time.perf_counter() - t0, 2), tokens_per_s=round(res.tokens_per_s, 1),
        cpu_s=round(time.process_time() - cpu0, 2), step_ms=step_ms, step_cpu_ms=step_cpu_ms,
        muon_ns_dtype=res.muon_ns.dtype if res.muon_ns is not None else None,
        **_compile_fields(res.compile_report),
        attn_entropy=entropy, attn_entropy_min_layer=entropy_min,
        log_z_start=history.log_z[0] if history.log_z else None,
        log_z_end=history.log_z[-1] if history.log_z else None,
        spike_score=SpikeScores(loss=finite_or_none(s.loss_spike_score_w100),
                                grad_norm=finite_or_none(s.grad_spike_score_w100),
                                loss_w1000=finite_or_none(s.loss_spike_score),
                                grad_norm_w1000=finite_or_none(s.grad_spike_score)),
        error=error, stop_reason=str(stop) if stop else None, stopped_by=stop.kind if stop else None,
        divergence=res.verdict, history=history)


def _compile_fields(report) -> Dict[str, Any]:
    if report is None:
        return {}
    return {"compile_graphs": report.graphs, "compile_graph_breaks": report.graph_breaks,
            "compile_recompiles": report.recompiles}


def _outcome(diverged: bool, stop: Optional[StopReason], steps_done: int,
             steps: int) -> Tuple[RunStatus, Optional[str]]:
    """(status, error) of a finished `train` call: a divergence by the loop's verdict
    (metrics.judge_divergence) is `diverged`; a stop by the study's deadline before the last step is `cut`; a
    stop by a signal (SIGINT/SIGTERM: the study is being interrupted) or for any other reason is `failed`."""
    if diverged:
        return RunStatus.DIVERGED, None
    if stop is None:
        return RunStatus.OK, None
    if stop.kind is StopKind.CALLBACK:  # the deadline callback; on the last step the run is complete
        if steps_done >= steps:
            return RunStatus.OK, None
        return RunStatus.CUT, f"stopped at step {steps_done}: the study's time budget (--max-minutes) was spent"
    return RunStatus.FAILED, f"stopped early: {stop}"


def interrupted(rec: RunRecord) -> bool:
    """The run was stopped by SIGINT/SIGTERM (the training loop's StopRequest): the study is being interrupted,
    and the record is not a result."""
    return rec.failed and rec.stopped_by is StopKind.SIGNAL
