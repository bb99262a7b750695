"""`run_study`: run every (variant, lr, seed) of a plan and write the study's directory.

    plan = make_plan("default")
    summary = run_study(plan, "study_out")     # runs/*.json, summary.json, report.html, plots

Bad data fails before any run; the output directory is checked before anything is written (layout.py); each
run's history is written as it finishes; the summary and report at the end.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..errors import ConfigError
from ..train.tokens import load_tokens
from ..version import __version__
from .analysis import analyze
from .layout import RUNS_DIR, SUMMARY_FILE, check_out_dir, write_history, write_plan
from .plan import StudyPlan, describe_models, plan_fingerprint, run_specs
from .pool import execute
from .records import RunRecord, RunSpec
from .report import write_report
from .run import run_one
from .summary import StudySummary
from .table import fmt
from .variants import VARIANTS

__all__ = ["run_study"]


def _environment(device: str) -> Dict[str, Any]:
    import torch

    env = {"torch": torch.__version__, "python": platform.python_version(), "device": device,
           "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _config(plan: StudyPlan, vocab: int, source: str, wall_s: float) -> Dict[str, Any]:
    """summary.json's "config": what was run, for people and for the report."""
    return {
        "profile": plan.profile, "variants": list(plan.variants), "lrs": list(plan.lrs), "seeds": list(plan.seeds),
        "variant_descriptions": {v: VARIANTS[v].description for v in plan.variants},
        "model_shape": {**plan.shape, "vocab_size": vocab},
        "models": describe_models(plan, vocab),
        "train": {**plan.train.to_dict(), "final_lr": None if plan.schedule == "constant" else plan.train.final_lr,
                  "schedule": plan.schedule},
        "spike_score": {"n_std": 7.0, "window": 100, "window_w1000": 1000,
                        "definition": "percent of values >= 7 std from the rolling mean of the previous "
                                      "`window` values (OLMo 2); 'loss'/'grad_norm' use window 100"},
        "lr_sensitivity_loss": "validation loss at the end of training; diverged/failed runs count as l0",
        "data": {"source": source, "path": plan.data, "tokenizer": plan.tokenizer},
        "workers": plan.workers, "fingerprint": plan_fingerprint(plan), "qknorm": __version__,
        "environment": _environment(plan.train.device),
        "wall_time_s": round(wall_s, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _prepare_out(out: Path, force: bool) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        if force and (out / RUNS_DIR).is_dir():
            shutil.rmtree(out / RUNS_DIR)
        (out / RUNS_DIR).mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"out_dir {out}: cannot create the output directory ({e.strerror or e})") from None


def run_study(plan: StudyPlan, out_dir, *, runner: Callable[[RunSpec], RunRecord] = run_one, force: bool = False,
              max_minutes: Optional[float] = None, report: bool = True,
              log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> StudySummary:
    """Run every (variant, lr, seed) of `plan` and write `out_dir`/{plan.json, runs/*.json, summary.json} and,
    with `report`, report.html and the PNG plots. Returns the summary (also printed by the CLI)."""
    out = Path(out_dir)
    check_out_dir(out, plan, force)
    data = load_tokens(plan.data, tokenizer=plan.tokenizer)  # bad data fails here, before any run
    specs = run_specs(plan, data.vocab_size)
    source, vocab = data.source, data.vocab_size
    del data
    _prepare_out(out, force)
    write_plan(out, plan)
    t0 = time.time()
    if max_minutes is not None:
        specs = [dataclasses.replace(s, deadline=t0 + 60.0 * max_minutes) for s in specs]
    n, runs = len(specs), []  # type: ignore[var-annotated]
    log(f"qknorm study: {n} runs ({len(plan.variants)} variants x {len(plan.lrs)} LRs x {len(plan.seeds)} seeds, "
        f"{plan.train.steps} steps each) on {plan.workers} worker(s), device {plan.train.device}")

    def on_done(rec: RunRecord) -> None:
        write_history(out, rec)
        rec = dataclasses.replace(rec, history=None)
        runs.append(rec)
        status = ("FAILED " + rec.error) if rec.error and rec.final_loss is None else (
            f"val {fmt(rec.val_loss)} max logit {fmt(rec.max_attn_logit, '.4g')}" + (" DIVERGED" if rec.diverged
                                                                                    else ""))
        log(f"  [{len(runs):>3}/{n}] {rec.name:<24} {status}  ({rec.time_s:.0f}s, {time.time() - t0:.0f}s elapsed)")

    execute(specs, runner, plan.workers, on_done)
    order = {(v, lr, s): i for i, (v, lr, s) in enumerate(
        sorted(((s.variant, s.lr, s.seed) for s in specs), key=lambda k: (plan.variants.index(k[0]), k[1], k[2])))}
    runs.sort(key=lambda r: order[(r.variant, r.lr, r.seed)])
    summary = StudySummary(runs=tuple(runs), analysis=analyze(runs, plan.variants, plan.lrs, plan.seeds, vocab),
                           config=_config(plan, vocab, source, time.time() - t0))
    (out / SUMMARY_FILE).write_text(json.dumps(summary.to_json(), indent=1))
    if report:
        write_report(out, summary)
    return summary
