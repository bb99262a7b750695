"""The QK-norm stability study: norm variants x a peak-learning-rate grid x seeds, trained in parallel, with a
summary, a printed table and an HTML report.

    plan = make_plan("default")                      # variants, LR grid, seeds, model shape, train settings
    summary = run_study(plan, "study_out")           # trains every run; writes runs/*.json, summary.json, report

  variants.py  the variants (norms differ, nothing else)      profiles.py  quick / default / gpu / smoke
  plan.py      StudyPlan, its RunSpecs                        records.py   RunSpec, RunRecord, RunStatus, RunHistory
  run.py       one run (train + measure)                      scheduler.py the interface of where runs train
  pool.py      the local process pool, interrupts             ray_backend.py  Ray tasks: a local instance or a cluster
  curve.py     loss vs LR over seeds, the optimum             analysis.py  LR sensitivity and the checks
  summary.py   StudySummary (summary.json)                    layout.py    the output directory, reusable runs
  table.py     the printed table                              plots.py     the PNG plots
  report.py    report.html                                    console.py   output that survives a closed pipe
  driver.py    run_study (resumes: finished runs with an identical stored spec are reused)
"""
from .analysis import StudyAnalysis, analyze
from .driver import run_study
from .layout import PLAN_FILE, RUNS_DIR, SUMMARY_FILE, check_out_dir
from .plan import StudyPlan, make_plan, parse_lrs, parse_variants, plan_fingerprint, plan_label, run_specs
from .profiles import PROFILES, WORTSMAN_GRID, Profile
from .pool import LocalPool
from .ray_backend import RayScheduler
from .records import RunHistory, RunRecord, RunSpec, RunStatus, run_name
from .report import write_report
from .run import run_one
from .scheduler import Scheduler
from .summary import StudySummary
from .table import format_checks, format_table, plural
from .variants import VARIANTS, model_config

__all__ = ["StudyAnalysis", "analyze", "run_study", "PLAN_FILE", "RUNS_DIR", "SUMMARY_FILE", "check_out_dir",
           "StudyPlan", "make_plan", "parse_lrs", "parse_variants", "plan_fingerprint", "plan_label", "run_specs",
           "PROFILES", "WORTSMAN_GRID", "Profile", "RunHistory", "RunRecord", "RunSpec", "RunStatus", "run_name",
           "write_report", "run_one", "Scheduler", "LocalPool", "RayScheduler", "StudySummary", "format_checks",
           "format_table", "plural", "VARIANTS", "model_config"]
