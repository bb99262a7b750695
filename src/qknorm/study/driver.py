"""`run_study`: run every (variant, lr, seed) of a plan and write the study's directory.

    plan = make_plan("default")
    summary = run_study(plan, "study_out")     # runs/*.json, summary.json, report.html, plots

Bad data fails before any run; the output directory is checked before anything is written (layout.py); each
run's file (spec, record, history) is written as it finishes. A rerun of the same command into the same
directory reuses every finished run whose stored spec is identical and trains only the rest (layout.py), so an
interrupted study (Ctrl-C, kill, the time budget) continues where it stopped and a finished one re-renders its
report in seconds. Without matplotlib the report is written without plots, and says so.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..errors import ConfigError
from ..io.names import TB_DIR
from ..train.compiled import require_compile_support
from ..train.loop import STATS_SEQS
from ..data.tokens import load_tokens
from ..train.tensorboard_log import require_tensorboard
from ..version import __version__
from .analysis import analyze
from .console import log_to_stderr
from .layout import RUNS_DIR, SUMMARY_FILE, WORKER_LOG, check_out_dir, finished_runs, write_atomic, write_plan, write_run
from .ci import CI_METHOD
from .plan import StudyPlan, describe_models, describe_training, plan_fingerprint, plan_label, run_specs
from .plots import MISSING_PLOTS, PLOTS, plots_available
from .pool import LocalPool
from .records import RunRecord, RunSpec
from .report import write_report
from .run import run_one
from .scheduler import Scheduler
from .estimate import Estimate, estimate_study
from .speed import MachinePeak, flops_per_s, probe_peak, usable_cpus
from .study_config import DataSource, Environment, StudyConfig
from .summary import StudySummary
from .table import fmt, plural
from .tensorboard import write_run_events
from .variants import VARIANTS

__all__ = ["run_study"]

COMPILE_CACHE_ENV, COMPILE_CACHE_DIR = "TORCHINDUCTOR_CACHE_DIR", ".compile_cache"


def _environment(device: str) -> Environment:
    import torch

    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None
    return Environment(torch=torch.__version__, python=platform.python_version(), device=device,
                       cpu_count=os.cpu_count(), platform=platform.platform(), gpu=gpu)


def _config(plan: StudyPlan, vocab: int, source: str, fingerprint: str, wall_s: float, reused: int,
            plots: bool, runs, peak: MachinePeak, estimate: Optional[Estimate],
            cache_dir: Optional[str]) -> StudyConfig:
    """summary.json's "config": what was run, for people and for the report."""
    return StudyConfig(
        profile=plan.profile, label=plan_label(plan), variants=tuple(plan.variants),
        optimizers=tuple(plan.optimizers), lrs=tuple(plan.lrs), seeds=tuple(plan.seeds),
        variant_descriptions={v: VARIANTS[v].description for v in plan.variants},
        variant_training=describe_training(plan), uncertainty=CI_METHOD,
        model_shape={**plan.shape, "vocab_size": vocab},
        models=describe_models(plan, vocab),
        train=plan.train, schedule=plan.schedule,
        spike_score={"n_std": 7.0, "window": 100, "window_w1000": 1000,
                     "definition": "percent of values >= 7 std from the rolling mean of the previous "
                                   "`window` values (OLMo 2); 'loss'/'grad_norm' use window 100"},
        lr_sensitivity_loss="validation loss at the end of training; diverged runs count as l0; failed and cut "
                            "runs are left out (the variant's sensitivity is then undefined)",
        stats_seqs=STATS_SEQS,
        max_attn_logit_sampling=(
            f"largest attention logit (fp32) over stats passes every {plan.train.stats_every} steps and at the last "
            f"step, each on {min(STATS_SEQS, plan.train.batch_size)} of the batch's {plan.train.batch_size} "
            "sequences: a lower bound of the run's true maximum"),
        data=DataSource(source=source, path=plan.data, tokenizer=plan.tokenizer, fingerprint=fingerprint),
        workers=plan.workers, fingerprint=plan_fingerprint(plan), qknorm=__version__,
        environment=_environment(plan.train.device),
        # Muon runs: the Newton-Schulz dtype(s) the machine(s) chose (train/newton_schulz.py); () without Muon
        muon_ns_dtype=tuple(sorted({r.muon_ns_dtype for r in runs if r.muon_ns_dtype})),
        # this machine's probed peak (runs' mfu = flops_per_s / peak_flops) and the estimate made before training
        machine={**peak.to_json(), "usable_cpus": usable_cpus()},
        compile=_compile_summary(plan, runs, cache_dir),
        estimate=estimate.to_json() if estimate is not None else None,
        wall_time_s=round(wall_s, 1), reused_runs=reused, plots=plots,
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


def _compile_summary(plan: StudyPlan, runs, cache_dir: Optional[str]) -> Dict[str, Any]:
    """Whether the runs were compiled, and dynamo's graph breaks and recompiles summed over them."""
    if not plan.train.compile:
        return {"on": False}
    return {"on": True, "cache_dir": cache_dir,
            "graphs": sum(r.compile_graphs or 0 for r in runs),
            "graph_breaks": sum(r.compile_graph_breaks or 0 for r in runs),
            "recompiles": sum(r.compile_recompiles or 0 for r in runs)}


@contextlib.contextmanager
def _shared_compile_cache(out: Path, on: bool):
    """With compile on, inductor's cache in OUT/.compile_cache for this process and the workers it starts (unless
    TORCHINDUCTOR_CACHE_DIR is set): each variant is compiled cold once per study, not once per worker."""
    if not on or os.environ.get(COMPILE_CACHE_ENV):
        yield os.environ.get(COMPILE_CACHE_ENV) if on else None
        return
    os.environ[COMPILE_CACHE_ENV] = str((out / COMPILE_CACHE_DIR).resolve())
    try:
        yield os.environ[COMPILE_CACHE_ENV]
    finally:
        os.environ.pop(COMPILE_CACHE_ENV, None)


def _prepare_out(out: Path, force: bool) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in (RUNS_DIR, TB_DIR) if force else ():  # another study's runs and their events
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        (out / RUNS_DIR).mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"out_dir {out}: cannot create the output directory ({e.strerror or e})") from None


# summary.json "config" keys a rerun changes without changing a plot
_VOLATILE = ("date", "wall_time_s", "reused_runs", "machine", "estimate", "compile")


def _shows_the_same(out: Path, summary: Dict[str, Any]) -> bool:
    """Whether out/summary.json already holds the results and settings (all but _VOLATILE) of `summary` (its JSON
    form) and the plots on disk are newer than every stored run (whose per-step columns they draw): then a rerun
    that trained nothing need not redraw them (matplotlib is most of such a rerun's time)."""
    def strip(d: Dict[str, Any]) -> Dict[str, Any]:
        return {**d, "config": {k: v for k, v in d.get("config", {}).items() if k not in _VOLATILE}}
    try:
        same = strip(json.loads((out / SUMMARY_FILE).read_text())) == strip(summary)
        newest_run = max((p.stat().st_mtime_ns for p in (out / RUNS_DIR).glob("*.json")), default=0)
        return same and all((out / name).stat().st_mtime_ns >= newest_run for name in PLOTS)
    except (OSError, ValueError):
        return False


def run_study(plan: StudyPlan, out_dir, *, runner: Callable[[RunSpec], RunRecord] = run_one, force: bool = False,
              max_minutes: Optional[float] = None, report: bool = True,
              log: Callable[[str], None] = log_to_stderr, scheduler: Optional[Scheduler] = None,
              tensorboard: bool = False) -> StudySummary:
    """Run every (variant, lr, seed) of `plan` not already finished in `out_dir` and write `out_dir`/{plan.json,
    runs/*.json, summary.json} and, with `report`, report.html and the PNG plots (without plots when matplotlib
    is missing). Returns the summary (also printed by the CLI). `scheduler`: where the runs train (default: the
    local process pool; ray_backend.RayScheduler for Ray). `tensorboard`: each run also as TensorBoard event
    files in OUT/tb/<run name> (study/tensorboard.py). KeyboardInterrupt propagates after the worker
    processes are stopped; every run finished by then is on disk."""
    if tensorboard:
        require_tensorboard()  # before anything is read or written
    if plan.train.compile:
        require_compile_support(plan.train.device)
    scheduler = LocalPool() if scheduler is None else scheduler
    t0 = time.time()
    out = Path(out_dir)
    check_out_dir(out, plan_fingerprint(plan), force)
    data = load_tokens(plan.data, tokenizer=plan.tokenizer)  # bad data fails here, before any run
    fingerprint = data.fingerprint().short
    specs = run_specs(plan, data.vocab_size, fingerprint)
    source, vocab = data.source, data.vocab_size
    del data
    scheduler.prepare(workers=plan.workers, device=plan.train.device)  # Ray: connect now, before anything is written
    try:
        _prepare_out(out, force)
        write_plan(out, plan)
        runs = finished_runs(out, specs)
    except BaseException:
        scheduler.close()  # execute() closes it otherwise
        raise
    done = {r.name for r in runs}
    todo = [s for s in specs if s.name not in done]
    if max_minutes is not None:
        todo = [dataclasses.replace(s, deadline=t0 + 60.0 * max_minutes) for s in todo]
    n = len(specs)
    opts = f"{plural(len(plan.optimizers), 'optimizer')} x " if len(plan.optimizers) > 1 else ""
    log(f"qknorm study ({plan_label(plan)}): {plural(n, 'run')} ({plural(len(plan.variants), 'variant')} x {opts}"
        f"{plural(len(plan.lrs), 'LR')} x {plural(len(plan.seeds), 'seed')}, {plan.train.steps} steps each) on "
        f"{plural(plan.workers, 'worker')}, device {plan.train.device}"
        + (f"; reusing {len(runs)} finished {'run' if len(runs) == 1 else 'runs'} from {out / RUNS_DIR}"
           if runs else ""))
    plots = report and plots_available()
    if report and not plots:
        log(f"note: {MISSING_PLOTS}")
    by_name = {s.name: s for s in specs}
    with _shared_compile_cache(out, plan.train.compile) as cache_dir:
        peak = probe_peak(plan.train.device, plan.train.dtype.value)
        # a custom runner fakes training or trains elsewhere: the estimate measures run_one here
        estimate = estimate_study(todo, plan.workers) if runner is run_one and todo else None
        log(f"this machine: {peak.flops_per_s / 1e9:.1f} GFLOP/s peak ({peak.how})"
            + (f"; {estimate.describe()}" if estimate is not None else ""))
        for line in estimate.breakdown() if estimate is not None else ():
            log(line)

        def on_done(rec: RunRecord) -> None:
            fps = flops_per_s(by_name[rec.name], rec)
            rec = dataclasses.replace(rec, flops_per_s=fps, mfu=round(fps / peak.flops_per_s, 3) if fps else None)
            write_run(out, by_name[rec.name], rec)
            if tensorboard and rec.history is not None:
                write_run_events(out, rec.name, rec.history)
            rec = dataclasses.replace(rec, history=None)
            runs.append(rec)
            if rec.status.measured:
                status = f"val {fmt(rec.val_loss)} max logit {fmt(rec.max_attn_logit, '.4g')}" + (
                    f" DIVERGED ({rec.divergence.reason.value})" if rec.diverged and rec.divergence else
                    " DIVERGED" if rec.diverged else "")
            else:
                status = f"{rec.status.value.upper()} {rec.error}"
            log(f"  [{len(runs):>3}/{n}] {rec.name:<30} {status}  ({rec.time_s:.0f}s, {time.time() - t0:.0f}s elapsed)")

        t_runs = time.time()
        scheduler.execute(todo, runner, plan.workers, on_done, worker_log=out / WORKER_LOG)
        if estimate is not None:
            log(f"trained {plural(len(todo), 'run')} in {time.time() - t_runs:.0f} s wall (estimated "
                f"{estimate.wall_s:.0f} s)")
    if plan.train.compile:
        breaks = sum(r.compile_graph_breaks or 0 for r in runs)
        recompiles = sum(r.compile_recompiles or 0 for r in runs)
        log(f"torch.compile: {plural(breaks, 'graph break')}, {plural(recompiles, 'recompile')} over the runs")
    order = {s.name: (plan.optimizers.index(s.optimizer), plan.variants.index(s.variant), s.lr, s.seed) for s in specs}
    runs.sort(key=lambda r: order[r.name])
    softcaps = {v: m["attn_softcap"] for v, m in describe_models(plan, vocab).items()}
    summary = StudySummary(runs=tuple(runs), analysis=analyze(runs, plan.variants, plan.lrs, plan.seeds, vocab,
                                                              plan.optimizers, softcaps),
                           config=_config(plan, vocab, source, fingerprint, time.time() - t0, len(done), plots,
                                          runs, peak, estimate, cache_dir))
    text = json.dumps(summary.to_json(), indent=1)
    redraw = bool(todo) or not _shows_the_same(out, json.loads(text))
    write_atomic(out / SUMMARY_FILE, text)
    if report:
        _, note = write_report(out, summary, redraw=redraw)
        if note and plots:  # matplotlib imported, yet drawing failed: say so, in the log and in summary.json
            log(f"note: report.html has no plots: {note}")
            summary = dataclasses.replace(summary, config=dataclasses.replace(summary.config, plots=False,
                                                                              plots_note=note))
            write_atomic(out / SUMMARY_FILE, json.dumps(summary.to_json(), indent=1))
    return summary
