"""`run_scaling_study`: the study at every size of a scaling plan, then the trend across sizes.

    splan = make_scaling_plan("scaling")
    summary = run_scaling_study(splan, "scaling_out")

    OUT/plan.json              the scaling plan and its fingerprint (a rerun into OUT must be the same study)
    OUT/sizes/<size>/          each size's own study directory (driver.py): runs, summary.json, report.html
    OUT/summary.json           `scaling` rows, `scaling_fit`, every run with its `size`, the config (below)
    OUT/report.html, scaling_*.png   the report (scaling_report.py), led by Wortsman et al.'s figure

The sizes run smallest first, each to its end, so an interrupted study has whole sizes; a rerun of the same
command reuses every finished run (each size resumes as a study does). The time estimate is printed before any
run starts; `max_minutes` is one budget for all sizes.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from ..errors import ConfigError
from ..data.tokens import load_tokens
from .console import log_to_stderr
from .driver import run_study
from .layout import PLAN_FILE, SUMMARY_FILE, check_out_dir, finished_runs, write_atomic
from .pool import LocalPool
from .records import RunRecord, RunSpec
from .plan import run_specs
from .run import run_one
from .scaling_config import ScalingConfig, SizeEntry
from .scaling import FIT_METHOD, ScalingSummary, SizeResult, fmt_params, scaling_analysis
from .scaling_plan import ScalingPlan, estimate_scaling, params_nonembed, scaling_fingerprint
from .scaling_report import write_scaling_report
from .scheduler import Scheduler
from .summary import StudySummary
from .table import plural

__all__ = ["run_scaling_study", "read_scaling_summary", "SIZES_DIR"]

SIZES_DIR = "sizes"


def read_scaling_summary(out_dir) -> ScalingSummary:
    """A finished scaling study read back from OUT (its summary.json's config, each size's summary.json), the
    analysis recomputed: to re-render the report with `write_scaling_report` without training anything."""
    out = Path(out_dir)
    config = ScalingConfig.from_json(json.loads((out / SUMMARY_FILE).read_text())["config"])
    sizes = tuple(SizeResult(s.name, s.params_nonembed, s.tokens, StudySummary.from_json(
        json.loads((out / s.dir / SUMMARY_FILE).read_text()))) for s in config.sizes)
    return ScalingSummary(sizes=sizes, analysis=scaling_analysis(sizes), config=config)


def _config(splan: ScalingPlan, sizes: Tuple[SizeResult, ...], estimate: Optional[Tuple[float, str]], wall_s: float,
            plots: bool) -> ScalingConfig:
    first = sizes[0].summary.config
    return ScalingConfig(
        profile=splan.profile, label=first.label, variants=first.variants, optimizers=first.optimizers,
        seeds=first.seeds, train=first.train, schedule=first.schedule, data=first.data,
        sizes=tuple(SizeEntry(name=s.name, params_nonembed=s.params_nonembed, tokens=s.tokens,
                              model_shape=s.summary.config.model_shape, lrs=s.summary.config.lrs,
                              dir=f"{SIZES_DIR}/{s.name}", wall_time_s=s.summary.config.wall_time_s,
                              reused_runs=s.summary.config.reused_runs) for s in sizes),
        fingerprint=scaling_fingerprint(splan), scaling_fit_method=FIT_METHOD,
        uncertainty=first.uncertainty, lr_sensitivity_loss=first.lr_sensitivity_loss,
        variant_descriptions=first.variant_descriptions,
        estimate_s=round(estimate[0], 1) if estimate else None, estimate_method=estimate[1] if estimate else None,
        environment=first.environment, qknorm=first.qknorm, wall_time_s=round(wall_s, 1), plots=plots,
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


def run_scaling_study(splan: ScalingPlan, out_dir, *, runner: Callable[[RunSpec], RunRecord] = run_one,
                      force: bool = False, max_minutes: Optional[float] = None, report: bool = True,
                      log: Callable[[str], None] = log_to_stderr,
                      scheduler: Optional[Callable[[], Scheduler]] = None,
                      tensorboard: bool = False) -> ScalingSummary:
    """Run the study at every size of `splan` (module docstring) and write OUT. `scheduler`: a factory of the
    scheduler each size runs on (default: the local process pool). `tensorboard`: each size's runs as event
    files in its directory's tb/ (study/tensorboard.py)."""
    t0 = time.time()
    out = Path(out_dir)
    check_out_dir(out, scaling_fingerprint(splan), force)
    data = load_tokens(splan.first.data, tokenizer=splan.first.tokenizer)  # bad data fails here
    vocab, fingerprint = data.vocab_size, data.fingerprint().short
    del data
    specs = {s.name: run_specs(p, vocab, fingerprint) for s, p in splan.items()}
    todo = {k: v if force else [x for x in v if x.name not in {r.name for r in finished_runs(out / SIZES_DIR / k, v)}]
            for k, v in specs.items()}
    # a custom runner fakes training or trains elsewhere: the estimate measures run_one here (as run_study's)
    est = estimate_scaling(splan, todo) if runner is run_one else None
    params = {s.name: params_nonembed(p.shape, vocab) for s, p in splan.items()}
    log(f"qknorm scaling study ({splan.profile} profile): {plural(len(splan.sizes), 'size')} ("
        + ", ".join(f"{k} {fmt_params(v)}" for k, v in params.items()) + " non-embedding parameters), "
        f"{plural(sum(map(len, specs.values())), 'run')} in all, {sum(map(len, todo.values()))} to train"
        + (f"; estimate ~{est[0] / 60:.1f} min wall ({est[1]}; a loaded machine takes longer, finished runs are "
           "reused by a rerun)" if est is not None else ""))
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / PLAN_FILE, json.dumps({"fingerprint": scaling_fingerprint(splan),
                                                  "plan": splan.to_json()}, indent=1))
    except OSError as e:
        raise ConfigError(f"out_dir {out}: cannot write the output directory ({e.strerror or e})") from None
    results = []
    for size, plan in splan.items():
        left = None if max_minutes is None else max(1e-6, max_minutes - (time.time() - t0) / 60)
        log(f"size {size.name}: {fmt_params(params[size.name])} non-embedding parameters, "
            f"{json.dumps(dict(plan.shape))}")
        summary = run_study(plan, out / SIZES_DIR / size.name, runner=runner, force=force, max_minutes=left,
                            report=report, log=log, scheduler=(scheduler or LocalPool)(), tensorboard=tensorboard)
        tokens = plan.train.steps * plan.train.batch_size * plan.train.seq_len
        results.append(SizeResult(size.name, params[size.name], tokens, summary))
    sizes = tuple(results)
    plots = report  # the scaling figures; set False below when they could not be drawn
    summary = ScalingSummary(sizes=sizes, analysis=scaling_analysis(sizes),
                             config=_config(splan, sizes, est, time.time() - t0, plots))
    write_atomic(out / SUMMARY_FILE, json.dumps(summary.to_json(), indent=1))
    if report:
        _, note = write_scaling_report(out, summary)
        if note:  # no figures on the scaling page (matplotlib missing, or drawing failed): summary.json says why
            summary = dataclasses.replace(summary, config=dataclasses.replace(summary.config, plots=False,
                                                                              plots_note=note))
            write_atomic(out / SUMMARY_FILE, json.dumps(summary.to_json(), indent=1))
    return summary
