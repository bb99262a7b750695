"""What a study ran, as summary.json's "config" holds it: `StudyConfig` (with `DataSource` and `Environment`).

The report, the console summary and the scaling study read its fields (`cfg.train.steps`, `cfg.schedule`,
`cfg.environment.torch`); `to_json` writes the object summary.json has always held, key for key in the same
order (driver.py builds it from the plan, the data and the machine), and `from_json` reads it back, tolerating
the keys that older files lack (their fields keep the defaults here) and ignoring keys no longer written.

`train` is the runs' shared `TrainConfig`; on disk it is that config's `to_dict()` with the LR schedule's name
("cosine" or "constant") beside it and `final_lr` null for a constant schedule.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

from ..train.config import TrainConfig
from .records import DEFAULT_OPTIMIZER

__all__ = ["StudyConfig", "DataSource", "Environment", "train_to_json", "train_from_json", "known_fields"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSource:
    """The tokens the runs trained on: a description for people, the path and tokenizer given (None: the
    embedded corpus), and the fingerprint of the token stream (data/fingerprint.py; None in older files)."""

    source: str = ""
    path: Optional[str] = None
    tokenizer: Optional[str] = None
    fingerprint: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Optional[Mapping[str, Any]]) -> "DataSource":
        return cls(**known_fields(cls, d or {}))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Environment:
    """The machine the study ran on (versions, device; `gpu` only on a CUDA device)."""

    torch: Optional[str] = None
    python: Optional[str] = None
    device: Optional[str] = None
    cpu_count: Optional[int] = None
    platform: Optional[str] = None
    gpu: Optional[str] = None

    @property
    def hardware(self) -> Optional[str]:
        """The GPU's name, else the device."""
        return self.gpu or self.device

    def to_json(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.gpu is None:
            out.pop("gpu")
        return out

    @classmethod
    def from_json(cls, d: Optional[Mapping[str, Any]]) -> "Environment":
        return cls(**known_fields(cls, d or {}))


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """summary.json's "config" (module docstring): the fields in the file's order."""

    profile: str = ""
    label: str = ""
    variants: Tuple[str, ...]
    optimizers: Tuple[str, ...] = (DEFAULT_OPTIMIZER,)  # files written before the study crossed optimizers
    lrs: Tuple[float, ...]
    seeds: Tuple[int, ...]
    variant_descriptions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    variant_training: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # plan.describe_training
    uncertainty: Optional[str] = None  # ci.CI_METHOD
    model_shape: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the plan's shape and vocab_size
    models: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # each variant's ModelConfig.to_dict()
    train: TrainConfig = TrainConfig()
    schedule: str = "cosine"  # written inside "train"
    spike_score: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # what the spike columns mean
    lr_sensitivity_loss: Optional[str] = None  # which loss LR sensitivity uses, for people
    stats_seqs: Optional[int] = None  # sequences a stats pass sees (train/preflight.STATS_SEQS)
    max_attn_logit_sampling: Optional[str] = None
    data: DataSource = DataSource()
    workers: Optional[int] = None
    fingerprint: Optional[str] = None  # plan.plan_fingerprint
    qknorm: Optional[str] = None  # the version
    environment: Environment = Environment()
    muon_ns_dtype: Tuple[str, ...] = ()  # Newton-Schulz dtypes the Muon runs used
    machine: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # probed peak (speed.MachinePeak), CPUs
    compile: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # driver._compile_summary
    estimate: Optional[Mapping[str, Any]] = None  # estimate.Estimate.to_json() made before training
    wall_time_s: float = 0.0
    reused_runs: int = 0
    plots: bool = True
    date: str = ""
    plots_note: Optional[str] = None  # why there are no plots (plots False)

    @property
    def vocab_size(self) -> int:
        return int(self.model_shape["vocab_size"])

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in _NOT_WRITTEN or f.name in _WRITTEN_WHEN_SET and v is None:
                continue
            out[f.name] = _json(f.name, v, self.schedule)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "StudyConfig":
        kw = known_fields(cls, d)
        kw.update(variants=tuple(d["variants"]), lrs=tuple(d["lrs"]), seeds=tuple(d["seeds"]),
                  data=DataSource.from_json(d.get("data")), environment=Environment.from_json(d.get("environment")))
        if d.get("optimizers"):
            kw["optimizers"] = tuple(d["optimizers"])
        if "muon_ns_dtype" in d:
            kw["muon_ns_dtype"] = tuple(d["muon_ns_dtype"])
        if "train" in d:
            kw["train"], kw["schedule"] = train_from_json(d["train"])
        return cls(**kw)


_NOT_WRITTEN = ("schedule",)  # written inside "train"
_WRITTEN_WHEN_SET = ("plots_note",)


def train_to_json(train: TrainConfig, schedule: str) -> Dict[str, Any]:
    """config.train: the TrainConfig's settings, final_lr null for a constant schedule, the schedule's name last."""
    return {**train.to_dict(), "final_lr": None if schedule == "constant" else train.final_lr, "schedule": schedule}


def train_from_json(d: Mapping[str, Any]) -> Tuple[TrainConfig, str]:
    """(TrainConfig, schedule) from config.train; settings that older files lack keep their defaults, settings no
    longer known are left out."""
    train = dict(d)
    schedule = train.pop("schedule", "cosine")
    if train.get("final_lr") is None:  # a constant schedule: final_lr = lr
        train["final_lr"] = train.get("lr", TrainConfig().lr)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in train.items() if k in names},
                                 source="summary.json config.train"), schedule


def _json(name: str, v: Any, schedule: str) -> Any:
    if name == "train":
        return train_to_json(v, schedule)
    if isinstance(v, (DataSource, Environment)):
        return v.to_json()
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, Mapping):
        return dict(v)
    return v


def known_fields(cls, d: Mapping[str, Any]) -> Dict[str, Any]:
    """The keys of `d` that are fields of `cls` (older files lack some, and held some no longer written)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}
