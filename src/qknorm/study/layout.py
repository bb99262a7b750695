"""A study's output directory: which files it holds, and the guard against writing into someone else's.

    OUT/plan.json            the plan and its fingerprint (identifies the study's results)
    OUT/runs/<name>.json     each run's per-step history (name = <variant>_lr<lr>_s<seed>)
    OUT/summary.json         every run's record, the analysis, what was run (summary.py)
    OUT/report.html, *.png   the report (report.py, plots.py)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Sequence, Tuple

from ..errors import ConfigError
from .plan import StudyPlan, plan_fingerprint
from .records import RunHistory, RunRecord, run_name

__all__ = ["PLAN_FILE", "SUMMARY_FILE", "RUNS_DIR", "REPORT_FILE", "check_out_dir", "write_history",
           "read_histories", "write_plan"]

PLAN_FILE, SUMMARY_FILE, RUNS_DIR, REPORT_FILE = "plan.json", "summary.json", "runs", "report.html"


def check_out_dir(out: Path, plan: StudyPlan, force: bool) -> None:
    """Refuse to write into a non-empty directory unless it holds this same study (or `force`)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} exists and is not a directory")
    if force or not out.is_dir() or not any(out.iterdir()):
        return
    try:
        old = json.loads((out / PLAN_FILE).read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or old.get("fingerprint") != plan_fingerprint(plan):
        what = "a different study" if isinstance(old, dict) else "files that are not a qknorm study"
        raise ConfigError(f"out_dir {out} is not empty and holds {what}; choose another output directory or "
                          "force=True to overwrite")


def write_plan(out: Path, plan: StudyPlan) -> None:
    (out / PLAN_FILE).write_text(json.dumps({"fingerprint": plan_fingerprint(plan), "plan": plan.to_json()},
                                            indent=1))


def write_history(out: Path, rec: RunRecord) -> None:
    """runs/<name>.json: the run's identity and its per-step columns."""
    history = (rec.history or RunHistory()).to_json()
    (out / RUNS_DIR / f"{rec.name}.json").write_text(json.dumps(
        {"variant": rec.variant, "lr": rec.lr, "seed": rec.seed, **history}))


def read_histories(out: Path, runs: Sequence[RunRecord]) -> Dict[Tuple[str, float, int], RunHistory]:
    """The histories of `runs` that are on disk, keyed by (variant, lr, seed)."""
    hist = {}
    for r in runs:
        p = out / RUNS_DIR / f"{run_name(r.variant, r.lr, r.seed)}.json"
        try:
            hist[(r.variant, r.lr, r.seed)] = RunHistory.from_json(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return hist
