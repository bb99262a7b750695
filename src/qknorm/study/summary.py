"""`StudySummary`: a study's runs, what they say (analysis.py) and what was run (`config`), as summary.json holds
it. `to_json` writes the file's form; `from_json` reads it back so the report can be re-rendered from disk.

summary.json: {"runs": [RunRecord...], "lr_sensitivity": {arm: float|null}, "lr_sensitivity_detail": {...},
"leaderboard": [one row per arm, leaderboard.py], "checks": {name: {...}}, "config": {profile, variants,
optimizers, lrs, seeds, model_shape, models, train, data, environment, wall_time_s, date, ...} (StudyConfig,
study_config.py)}. An arm is a
(variant, optimizer) pair, keyed by its label: the variant's name for AdamW, "variant/optimizer" else.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Tuple

from .analysis import StudyAnalysis
from .records import RunRecord, arm_label
from .study_config import StudyConfig

__all__ = ["StudySummary"]


@dataclasses.dataclass(frozen=True)
class StudySummary:
    runs: Tuple[RunRecord, ...]
    analysis: StudyAnalysis
    config: StudyConfig  # what was run: the plan, the models, the data, the machine (study_config.py)

    @property
    def variants(self) -> List[str]:
        return list(self.config.variants)

    @property
    def optimizers(self) -> List[str]:
        """The optimizers crossed with the variants (summaries written before there was a choice: AdamW)."""
        return list(self.config.optimizers)

    @property
    def arms(self) -> List[Tuple[str, str]]:
        """(variant, optimizer) pairs, optimizer-major, in the study's order."""
        return [(v, o) for o in self.optimizers for v in self.variants]

    @property
    def labels(self) -> List[str]:
        return [arm_label(v, o) for v, o in self.arms]

    @property
    def lrs(self) -> List[float]:
        return list(self.config.lrs)

    @property
    def seeds(self) -> List[int]:
        return list(self.config.seeds)

    def runs_of(self, label: str) -> List[RunRecord]:
        """The runs of one arm, by its label (for AdamW, the variant's name)."""
        return [r for r in self.runs if r.label == label]

    def to_json(self) -> Dict[str, Any]:
        return {"runs": [r.to_json() for r in self.runs], **self.analysis.to_json(), "config": self.config.to_json()}

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "StudySummary":
        return cls(runs=tuple(RunRecord.from_json(r) for r in d["runs"]), analysis=StudyAnalysis.from_json(d),
                   config=StudyConfig.from_json(d["config"]))
