"""What a scaling study ran, as its summary.json's "config" holds it: `ScalingConfig`, with one `SizeEntry` a size.

The scaling report, its plots and the console line read its fields (`cfg.train.steps`, `cfg.sizes[0].lrs`);
`to_json` writes the object the scaling summary.json has always held, key for key in the same order
(scaling_driver.py builds it from the plan and the first size's StudyConfig), `from_json` reads it back (keys that
older files lack keep the defaults here, keys no longer written are ignored). The settings every size shares (train,
data, environment) are the first size's (study_config.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

from ..train.config import TrainConfig
from .records import DEFAULT_OPTIMIZER
from .study_config import DataSource, Environment, known_fields, train_from_json, train_to_json

__all__ = ["ScalingConfig", "SizeEntry"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SizeEntry:
    """One size of the study: its name, parameters, tokens a run sees, model shape, LR grid, and where its study is."""

    name: str
    params_nonembed: int
    tokens: int
    model_shape: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    lrs: Tuple[float, ...] = ()
    dir: str = ""  # relative to the scaling study's directory: sizes/<name>
    wall_time_s: Optional[float] = None
    reused_runs: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        return {**dataclasses.asdict(self), "model_shape": dict(self.model_shape), "lrs": list(self.lrs)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SizeEntry":
        kw = known_fields(cls, d)
        kw["lrs"] = tuple(d.get("lrs") or ())
        return cls(**kw)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScalingConfig:
    """The scaling summary.json's "config" (module docstring): the fields in the file's order."""

    profile: str = ""
    label: str = ""
    variants: Tuple[str, ...] = ()
    optimizers: Tuple[str, ...] = (DEFAULT_OPTIMIZER,)
    seeds: Tuple[int, ...] = ()
    train: TrainConfig = TrainConfig()
    schedule: str = "cosine"  # written inside "train"
    data: DataSource = DataSource()
    sizes: Tuple[SizeEntry, ...] = ()
    fingerprint: Optional[str] = None  # scaling_plan.scaling_fingerprint
    scaling_fit_method: Optional[str] = None  # scaling.FIT_METHOD
    uncertainty: Optional[str] = None
    lr_sensitivity_loss: Optional[str] = None
    variant_descriptions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    estimate_s: Optional[float] = None  # the wall-time estimate made before training, and how it was made
    estimate_method: Optional[str] = None
    environment: Environment = Environment()
    qknorm: Optional[str] = None
    wall_time_s: float = 0.0
    plots: bool = True
    date: str = ""
    plots_note: Optional[str] = None  # why there are no plots (plots False)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "schedule" or f.name == "plots_note" and v is None:
                continue
            if f.name == "train":
                v = train_to_json(v, self.schedule)
            elif f.name == "sizes":
                v = [s.to_json() for s in v]
            elif isinstance(v, (DataSource, Environment)):
                v = v.to_json()
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Mapping):
                v = dict(v)
            out[f.name] = v
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ScalingConfig":
        kw = known_fields(cls, d)
        kw.update(variants=tuple(d.get("variants") or ()), seeds=tuple(d.get("seeds") or ()),
                  sizes=tuple(SizeEntry.from_json(s) for s in d.get("sizes") or ()),
                  data=DataSource.from_json(d.get("data")), environment=Environment.from_json(d.get("environment")))
        if d.get("optimizers"):
            kw["optimizers"] = tuple(d["optimizers"])
        if "train" in d:
            kw["train"], kw["schedule"] = train_from_json(d["train"])
        return cls(**kw)
