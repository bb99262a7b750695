"""A study's runs as TensorBoard event files: OUT/tb/<run name>/, written as each run finishes (`--tensorboard`).

The tags are a training run's (train/tensorboard_log.py), from the run's stored per-step history (RunHistory, the
same numbers as OUT/runs/<name>.json), so `tensorboard --logdir OUT/tb` overlays every run of the grid. Written
by the study's main process, so it works the same with worker processes and with Ray. A run trained again (cut or
failed before) replaces its events; runs reused from an earlier invocation keep what they have (none if that
invocation had no --tensorboard).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List

from ..io.names import TB_DIR
from ..train.tensorboard_log import TensorBoardLog
from .records import RunHistory

__all__ = ["step_records", "write_run_events"]


def step_records(h: RunHistory) -> List[Dict[str, Any]]:
    """The history's columns as one dict a step: StepRecord field name -> value, for the fields TensorBoard shows
    (TensorBoardLog.add)."""
    rows: Dict[int, Dict[str, Any]] = {}
    for i, step in enumerate(h.step):
        rows[step] = {"step": step, "loss": h.loss[i], "lr": h.lr[i], "grad_norm": h.grad_norm[i]}
    for i, step in enumerate(h.stats_step):
        rows.setdefault(step, {"step": step}).update(
            max_attn_logit=h.max_attn_logit[i], attn_logit_per_layer=h.attn_logit_per_layer[i], q_rms=h.q_rms[i],
            k_rms=h.k_rms[i])
    for step, v in zip(h.val_step, h.val_loss):
        rows.setdefault(step, {"step": step})["val_loss"] = v
    return [rows[s] for s in sorted(rows)]


def write_run_events(out: Path, name: str, history: RunHistory) -> Path:
    """OUT/tb/<name>/ with the run's events (an older directory of that name is replaced); returns it."""
    log_dir = Path(out) / TB_DIR / name
    shutil.rmtree(log_dir, ignore_errors=True)
    tb = TensorBoardLog(log_dir)
    try:
        for record in step_records(history):
            tb.add(record["step"], record)
    finally:
        tb.close()
    return log_dir
