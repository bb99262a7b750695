"""A study's output directory: which files it holds, the guard against writing into someone else's, and the
finished runs a rerun reuses.

    OUT/plan.json            the plan and its fingerprint (identifies the study's results)
    OUT/runs/<name>.json     each run as it finishes: its spec (`RunSpec.identity`), its record and its per-step
                             history (name = <variant>_lr<lr>_s<seed>, <variant>_<optimizer>_lr<lr>_s<seed> for
                             optimizers other than AdamW: records.run_name); written whole or not at all
    OUT/workers.log          what worker processes printed (warnings; nothing of theirs goes to the terminal)
    OUT/summary.json         every run's record, the analysis, what was run (summary.py)
    OUT/report.html, *.png   the report (report.py, plots.py)

A rerun of the same study into the same directory reuses a stored run only when its stored spec equals the new
spec (model, training settings, data fingerprint, versions) and it finished (ok or diverged); the file name
alone is never trusted. Cut and failed runs are trained again.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..errors import ConfigError
from .plan import StudyPlan, plan_fingerprint
from .records import RunHistory, RunRecord, RunSpec

__all__ = ["PLAN_FILE", "SUMMARY_FILE", "RUNS_DIR", "REPORT_FILE", "WORKER_LOG", "check_out_dir", "write_run",
           "read_histories", "write_plan", "finished_runs", "write_atomic"]

PLAN_FILE, SUMMARY_FILE, RUNS_DIR, REPORT_FILE = "plan.json", "summary.json", "runs", "report.html"
WORKER_LOG = "workers.log"


def write_atomic(path: Path, text: str) -> None:
    """Write `path` whole or not at all (a kill mid-write leaves the old file or none, never half of one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check_out_dir(out: Path, fingerprint: str, force: bool) -> None:
    """Refuse to write into a non-empty directory unless it holds this same study (or `force`): its plan.json has
    `fingerprint` (a study's `plan_fingerprint`, a scaling study's `scaling_fingerprint`)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} exists and is not a directory")
    if force or not out.is_dir() or not any(out.iterdir()):
        return
    try:
        old = json.loads((out / PLAN_FILE).read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or old.get("fingerprint") != fingerprint:
        what = "a different study" if isinstance(old, dict) else "files that are not a qknorm study"
        raise ConfigError(f"out_dir {out} is not empty and holds {what}; choose another output directory or "
                          "force=True to overwrite")


def write_plan(out: Path, plan: StudyPlan) -> None:
    write_atomic(out / PLAN_FILE, json.dumps({"fingerprint": plan_fingerprint(plan), "plan": plan.to_json()},
                                             indent=1))


def write_run(out: Path, spec: RunSpec, rec: RunRecord) -> None:
    """runs/<name>.json: the run's spec, its record and its per-step columns (the columns at the top level, as
    the plots read them)."""
    history = (rec.history or RunHistory()).to_json()
    write_atomic(out / RUNS_DIR / f"{rec.name}.json", json.dumps(
        {"variant": rec.variant, "optimizer": rec.optimizer, "lr": rec.lr, "seed": rec.seed, "spec": spec.identity(),
         "record": rec.to_json(),
         **history}))


def finished_runs(out: Path, specs: Sequence[RunSpec]) -> List[RunRecord]:
    """The stored records of `specs` that a rerun may reuse: finished (ok or diverged) under an identical spec."""
    found = []
    for spec in specs:
        stored = _read_json(out / RUNS_DIR / f"{spec.name}.json")
        if not stored or stored.get("spec") != _json_round_trip(spec.identity()):
            continue
        try:
            rec = RunRecord.from_json(stored["record"])
        except (KeyError, TypeError, ValueError):
            continue
        if rec.status.measured and rec.name == spec.name:
            found.append(rec)
    return found


def _json_round_trip(obj: Any) -> Any:
    """`obj` as it reads back from a JSON file (tuples become lists)."""
    return json.loads(json.dumps(obj))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_histories(out: Path, runs: Sequence[RunRecord]) -> Dict[str, RunHistory]:
    """The histories of `runs` that are on disk, keyed by run name (records.run_name)."""
    hist = {}
    for r in runs:
        stored = _read_json(out / RUNS_DIR / f"{r.name}.json")
        if isinstance(stored, dict):
            hist[r.name] = RunHistory.from_json(stored)
    return hist
