"""`StudySummary`: a study's runs, what they say (analysis.py) and what was run (`config`), as summary.json holds
it. `to_json` writes the file's form; `from_json` reads it back so the report can be re-rendered from disk.

summary.json: {"runs": [RunRecord...], "lr_sensitivity": {variant: float|null}, "lr_sensitivity_detail": {...},
"checks": {name: {...}}, "config": {profile, variants, lrs, seeds, model_shape, models, train, data,
environment, wall_time_s, date, ...}}.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Tuple

from .analysis import StudyAnalysis
from .records import RunRecord

__all__ = ["StudySummary"]


@dataclasses.dataclass(frozen=True)
class StudySummary:
    runs: Tuple[RunRecord, ...]
    analysis: StudyAnalysis
    config: Dict[str, Any]  # what was run: the plan, the models, the data, the machine (display metadata)

    @property
    def variants(self) -> List[str]:
        return list(self.config["variants"])

    @property
    def lrs(self) -> List[float]:
        return list(self.config["lrs"])

    @property
    def seeds(self) -> List[int]:
        return list(self.config["seeds"])

    def runs_of(self, variant: str) -> List[RunRecord]:
        return [r for r in self.runs if r.variant == variant]

    def to_json(self) -> Dict[str, Any]:
        return {"runs": [r.to_json() for r in self.runs], **self.analysis.to_json(), "config": self.config}

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "StudySummary":
        return cls(runs=tuple(RunRecord.from_json(r) for r in d["runs"]), analysis=StudyAnalysis.from_json(d),
                   config=d["config"])
