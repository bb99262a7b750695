"""The QK-norm and stabilizer study: variants x optimizers x a peak-learning-rate grid x seeds, trained in
parallel, with a summary, a leaderboard with confidence intervals, a printed table and an HTML report.

    plan = make_plan("default")                      # variants, LR grid, seeds, model shape, train settings
    plan = make_plan("stabilizers")                  # every stabilizer x AdamW and Muon, 2 seeds
    summary = run_study(plan, "study_out")           # trains every run; writes runs/*.json, summary.json, report

  variants.py  the variants (one stabilizer each)             profiles.py  quick / default / gpu / stabilizers / smoke
  plan.py      StudyPlan, its RunSpecs                        records.py   RunSpec, RunRecord, RunStatus, RunHistory
  run.py       one run (train + measure)                      scheduler.py the interface of where runs train
  pool.py      the local process pool, interrupts             ray_backend.py  Ray tasks: a local instance or a cluster
  curve.py     loss vs LR over seeds, the optimum             analysis.py  LR sensitivity and the checks
  ci.py        95% intervals, separation of two methods       leaderboard.py  one row per (variant, optimizer)
  summary.py   StudySummary (summary.json)                    layout.py    the output directory, reusable runs
  study_config.py  StudyConfig: summary.json's "config" (what was run), typed; scaling_config.py the scaling study's
  table.py     the printed table                              plots.py     the PNG plots
  verdicts.py  the report's conclusions, from the CIs         report.py    report.html
  console.py   output that survives a closed pipe           speed.py     the probed peak, FLOP/s and MFU of a run
  estimate.py  the wall-time estimate, per arm and compile, from calibration runs made here
  driver.py    run_study (resumes: finished runs with an identical stored spec are reused)
  scaling_plan.py    ScalingPlan: the study at each model size of a scaling profile; the time estimate
  scaling.py         rows per (variant, size), the slope of LR sensitivity vs log(params), the trend in words
  scaling_driver.py  run_scaling_study          scaling_plots.py, scaling_report.py  its figures and report
"""
from .analysis import StudyAnalysis, analyze
from .driver import run_study
from .layout import PLAN_FILE, RUNS_DIR, SUMMARY_FILE, check_out_dir
from .leaderboard import LeaderboardRow
from .plan import (OPTIMIZERS, StudyPlan, make_plan, parse_lrs, parse_optimizers, parse_variants, plan_fingerprint,
                   plan_label, run_specs)
from .pool import LocalPool
from .profiles import PROFILES, WORTSMAN_GRID, Profile, device_profile
from .ray_backend import RayScheduler
from .records import RunHistory, RunRecord, RunSpec, RunStatus, arm_label, run_name
from .report import write_report
from .run import run_one
from .scaling import ScalingFit, ScalingRow, ScalingSummary
from .scaling_driver import read_scaling_summary, run_scaling_study
from .scaling_plan import ScalingPlan, is_scaling, make_scaling_plan
from .scaling_report import format_scaling_table
from .scheduler import Scheduler
from .study_config import StudyConfig
from .summary import StudySummary
from .table import format_checks, format_table, plural
from .variants import VARIANTS, model_config

__all__ = ["StudyAnalysis", "analyze", "run_study", "PLAN_FILE", "RUNS_DIR", "SUMMARY_FILE", "check_out_dir",
           "StudyPlan", "make_plan", "parse_lrs", "parse_variants", "plan_fingerprint", "plan_label", "run_specs",
           "OPTIMIZERS", "parse_optimizers", "device_profile", "LeaderboardRow", "arm_label",
           "PROFILES", "WORTSMAN_GRID", "Profile", "RunHistory", "RunRecord", "RunSpec", "RunStatus", "run_name",
           "write_report", "run_one", "Scheduler", "LocalPool", "RayScheduler", "StudySummary", "StudyConfig", "format_checks",
           "format_table", "plural", "VARIANTS", "model_config", "ScalingFit", "ScalingRow", "ScalingSummary",
           "run_scaling_study", "read_scaling_summary", "ScalingPlan", "is_scaling", "make_scaling_plan", "format_scaling_table"]
