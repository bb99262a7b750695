"""Typed records passed between the study's stages: what one run is (`RunSpec`), what it measured
(`RunRecord`, with its `RunStatus` and per-step `RunHistory`), and the derived numbers every consumer shares.

A `RunSpec` goes to a worker (pickled); a `RunRecord` comes back. Their JSON forms are the study's files:
summary.json's "runs" entries (`RunRecord.to_json`) and runs/<name>.json (`RunSpec.identity`, the record and
`RunHistory.to_json`, layout.py); `from_json` reads them back (tolerating fields that older files lack), so the
report can be re-rendered and a study resumed from disk.

A run ends in one of five states (`RunStatus`): `ok`; `diverged` — by metrics.judge_divergence (a non-finite
loss or gradient, a loss that rose clearly beyond its noise or ended above ln(vocab); `RunRecord.divergence` keeps
the verdict and its numbers), which LR sensitivity counts as l0; `failed` — it raised, stopped early for another
reason, or its worker process died: nothing was measured about the model, so it is left out of LR
sensitivity and reported apart; `cut` — stopped or skipped by the study's time budget (also left out);
`refused` — the training loop refused the run's settings before any step (a ConfigError: a mechanism that does
not combine with the variant, e.g. qk_clip with sigma_reparam), a property of the combination, not of training.

A run is one (variant, optimizer, peak LR, seed); (variant, optimizer) is its *arm*, labelled by `arm_label`:
the variant's name for AdamW (so AdamW-only studies keep their names and files) and "variant/optimizer" else.

The derived numbers live here, once: `RunRecord.sens_loss` (the loss LR sensitivity and "best loss" use) and
`RunRecord.logit` (the max attention logit, +inf when it was non-finite).
"""
from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..config import ModelConfig
from ..metrics import DivergenceVerdict
from ..train.config import TrainConfig
from ..train.step_record import StepRecord
from ..train.stop import StopKind
from ..version import __version__

__all__ = ["trajectory_settings", "RunSpec", "RunRecord", "RunStatus", "RunHistory", "SpikeScores", "run_name",
           "arm_label",
           "finite_or_none", "json_num", "num_from_json", "DEFAULT_OPTIMIZER"]

DEFAULT_OPTIMIZER = "adamw"  # runs of it keep the names they had before the study crossed optimizers


def run_name(variant: str, lr: float, seed: int, optimizer: str = DEFAULT_OPTIMIZER) -> str:
    """<variant>_lr<lr>_s<seed> for AdamW, <variant>_<optimizer>_lr<lr>_s<seed> else (no variant name ends in
    an optimizer's, so names stay unique: tests/study/test_plan_optimizers.py)."""
    opt = "" if optimizer == DEFAULT_OPTIMIZER else f"_{optimizer}"
    return f"{variant}{opt}_lr{lr:g}_s{seed}"


def arm_label(variant: str, optimizer: str = DEFAULT_OPTIMIZER) -> str:
    """The arm's label in tables, plots and summary.json's per-arm maps: "qknorm", "qknorm/muon"."""
    return variant if optimizer == DEFAULT_OPTIMIZER else f"{variant}/{optimizer}"


def finite_or_none(x: Any) -> Optional[float]:
    """float(x) when it is a finite number, else None (strict JSON has no NaN/inf)."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def json_num(x: Optional[float]) -> Any:
    """A float for strict JSON: None and NaN as None, +-inf as the strings "inf" / "-inf"."""
    if x is None or math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


def num_from_json(x: Any) -> Optional[float]:
    """The inverse of json_num."""
    if isinstance(x, str):
        return math.inf if x == "inf" else -math.inf
    return x


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of a study: a variant's model at one peak LR and seed, and where its data comes from."""

    variant: str
    lr: float
    seed: int
    model: ModelConfig
    train: TrainConfig
    data: Optional[str] = None  # None = the embedded corpus
    tokenizer: Optional[str] = None
    data_fingerprint: Optional[str] = None  # hash of the token stream the run trains and validates on
    deadline: Optional[float] = None  # time.time() after which the run stops (the study's --max-minutes)

    @property
    def optimizer(self) -> str:
        return self.train.optimizer.value

    @property
    def name(self) -> str:
        return run_name(self.variant, self.lr, self.seed, self.optimizer)

    def identity(self) -> Dict[str, Any]:
        """Everything that decides what the run measures, as JSON: a stored run is reused only when its
        identity equals the new spec's (the deadline is a budget, not part of the run)."""
        return {"variant": self.variant, "lr": self.lr, "seed": self.seed, "model": self.model.to_dict(),
                "train": trajectory_settings(self.train), "data": self.data, "tokenizer": self.tokenizer,
                "data_fingerprint": self.data_fingerprint, "qknorm": __version__,
                "torch": torch.__version__}  # the installed versions are part of what produced the numbers


def trajectory_settings(train: TrainConfig) -> Dict[str, Any]:
    """The settings that decide a run's numbers: all but `compile` (compiled and eager runs agree to 1e-5,
    tests/train/test_compile.py), so a study rerun with or without --compile reuses the other's runs."""
    return {k: v for k, v in train.to_dict().items() if k != "compile"}


class RunStatus(str, enum.Enum):
    """How a run ended (module docstring)."""

    OK = "ok"
    DIVERGED = "diverged"
    FAILED = "failed"
    CUT = "cut"
    REFUSED = "refused"

    @property
    def measured(self) -> bool:
        """The run trained to its end and measured the model (ok or diverged): LR sensitivity uses it."""
        return self in (RunStatus.OK, RunStatus.DIVERGED)


@dataclasses.dataclass(frozen=True)
class SpikeScores:
    """OLMo 2 spike scores (percent of values >= 7 std from the rolling mean): window 100 and 1000."""

    loss: Optional[float] = None
    grad_norm: Optional[float] = None
    loss_w1000: Optional[float] = None
    grad_norm_w1000: Optional[float] = None

    def to_json(self) -> Dict[str, Optional[float]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Optional[Dict[str, Any]]) -> "SpikeScores":
        d = d or {}
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class RunHistory:
    """Column form of a run's per-step records (non-finite values as None)."""

    step: List[int] = dataclasses.field(default_factory=list)
    loss: List[Optional[float]] = dataclasses.field(default_factory=list)
    lr: List[Optional[float]] = dataclasses.field(default_factory=list)
    grad_norm: List[Optional[float]] = dataclasses.field(default_factory=list)
    stats_step: List[int] = dataclasses.field(default_factory=list)
    max_attn_logit: List[Optional[float]] = dataclasses.field(default_factory=list)
    attn_logit_per_layer: List[List[Optional[float]]] = dataclasses.field(default_factory=list)
    q_rms: List[List[Optional[float]]] = dataclasses.field(default_factory=list)
    k_rms: List[List[Optional[float]]] = dataclasses.field(default_factory=list)
    attn_entropy: List[List[Optional[float]]] = dataclasses.field(default_factory=list)  # nats, per layer
    log_z: List[Optional[float]] = dataclasses.field(default_factory=list)  # mean logsumexp of the output logits
    val_step: List[int] = dataclasses.field(default_factory=list)
    val_loss: List[Optional[float]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_steps(cls, history: Sequence[StepRecord]) -> "RunHistory":
        """From the training loop's per-step records."""
        def per_layer(values):
            return [finite_or_none(v) for v in values or ()]

        stats = [r for r in history if r.has_stats]
        vals = [r for r in history if r.val_loss is not None]
        return cls(step=[r.step for r in history], loss=[finite_or_none(r.loss) for r in history],
                   lr=[finite_or_none(r.lr) for r in history],
                   grad_norm=[finite_or_none(r.grad_norm) for r in history], stats_step=[r.step for r in stats],
                   max_attn_logit=[finite_or_none(r.max_attn_logit) for r in stats],
                   attn_logit_per_layer=[per_layer(r.attn_logit_per_layer) for r in stats],
                   q_rms=[per_layer(r.q_rms) for r in stats], k_rms=[per_layer(r.k_rms) for r in stats],
                   attn_entropy=[per_layer(r.attn_entropy_per_layer) for r in stats],
                   log_z=[finite_or_none(r.log_z) for r in stats],
                   val_step=[r.step for r in vals], val_loss=[finite_or_none(r.val_loss) for r in vals])

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "RunHistory":
        return cls(**{f.name: list(d.get(f.name) or []) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What one run measured. `history` travels with it from the worker but is stored in its own file."""

    variant: str
    lr: float
    seed: int
    optimizer: str = DEFAULT_OPTIMIZER  # files written before the study crossed optimizers: AdamW
    init_loss: Optional[float] = None
    final_loss: Optional[float] = None  # mean train loss of the last 5% of steps
    val_loss: Optional[float] = None  # validation loss at the end
    max_attn_logit: Optional[float] = None  # max over the run's stats passes and layers; None if non-finite
    max_attn_logit_nonfinite: bool = False
    status: RunStatus = RunStatus.OK
    steps: int = 0
    time_s: float = 0.0
    tokens_per_s: float = 0.0
    cpu_s: Optional[float] = None  # process CPU time of the whole run (one thread: a quiet machine's wall time)
    step_ms: Optional[float] = None  # median wall time of a training step
    step_cpu_ms: Optional[float] = None  # median process CPU time of a step (CPU runs: robust to a loaded machine)
    flops_per_s: Optional[float] = None  # training FLOPs of a step / its median time (study/speed.py)
    mfu: Optional[float] = None  # flops_per_s / the machine's probed peak (summary.json config.machine)
    muon_ns_dtype: Optional[str] = None  # Muon runs: the dtype its Newton-Schulz ran in here (bf16/fp32)
    compile_graphs: Optional[int] = None  # compiled runs (train/compiled.py): graphs compiled during the run
    compile_graph_breaks: Optional[int] = None
    compile_recompiles: Optional[int] = None
    attn_entropy: Optional[float] = None  # mean attention entropy (nats) over layers at the last stats pass
    attn_entropy_min_layer: Optional[float] = None  # the lowest layer's, at the last stats pass
    log_z_start: Optional[float] = None  # mean logsumexp of the output logits at the first stats pass (step 0)
    log_z_end: Optional[float] = None  # ... at the last stats pass (the last step, before its update)
    spike_score: SpikeScores = SpikeScores()
    error: Optional[str] = None
    stop_reason: Optional[str] = None  # why training stopped early, for people
    stopped_by: Optional[StopKind] = None  # ... and what decides (train/stop.py); None = it did not
    traceback: Optional[str] = None
    divergence: Optional[DivergenceVerdict] = None  # the loop's verdict (None: the run did not train)
    history: Optional[RunHistory] = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", RunStatus(self.status))
        if self.stopped_by is not None:
            object.__setattr__(self, "stopped_by", StopKind(self.stopped_by))

    @property
    def name(self) -> str:
        return run_name(self.variant, self.lr, self.seed, self.optimizer)

    @property
    def label(self) -> str:
        """The run's arm (variant, optimizer) as `arm_label` writes it."""
        return arm_label(self.variant, self.optimizer)

    @property
    def log_z_drift(self) -> Optional[float]:
        """Output log Z at the end minus at the start (None unless both were measured and finite)."""
        if self.log_z_start is None or self.log_z_end is None:
            return None
        return self.log_z_end - self.log_z_start

    @property
    def diverged(self) -> bool:
        return self.status is RunStatus.DIVERGED

    @property
    def cut(self) -> bool:
        return self.status is RunStatus.CUT

    @property
    def failed(self) -> bool:
        return self.status is RunStatus.FAILED

    @property
    def refused(self) -> bool:
        return self.status is RunStatus.REFUSED

    @property
    def sens_loss(self) -> Optional[float]:
        """The loss LR sensitivity is computed on: validation loss (train loss without validation); None unless
        the run is ok (a diverged run counts as l0; failed and cut runs are left out: analysis.py)."""
        if self.status is not RunStatus.OK:
            return None
        return self.val_loss if self.val_loss is not None else self.final_loss

    @property
    def logit(self) -> Optional[float]:
        """The run's max attention logit, +inf when it was non-finite, None when none was measured."""
        return math.inf if self.max_attn_logit_nonfinite else self.max_attn_logit

    def to_json(self) -> Dict[str, Any]:
        """summary.json's entry for this run (no history; the traceback only for a failed run); `diverged`
        and `cut` are written beside `status` for readers of the older form."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "history"}
        out.update(status=self.status.value, diverged=self.diverged, cut=self.cut,
                   spike_score=self.spike_score.to_json(),
                   divergence=self.divergence.to_json() if self.divergence is not None else None)
        if not self.error:
            out.pop("traceback")
        return out

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "RunRecord":
        known = {f.name for f in dataclasses.fields(cls)} - {"history", "spike_score", "status", "divergence"}
        div = d.get("divergence")
        return cls(**{k: v for k, v in d.items() if k in known}, status=_status_of(d),
                   spike_score=SpikeScores.from_json(d.get("spike_score")),
                   divergence=DivergenceVerdict.from_json(div) if div else None)


def _status_of(d: Dict[str, Any]) -> RunStatus:
    """A stored run's status; files written before `status` existed had `diverged`/`cut` flags only, and marked a
    run that raised as diverged with its error text (a measured divergence had no error)."""
    if "status" in d:
        return RunStatus(d["status"])
    if d.get("cut"):
        return RunStatus.CUT
    if d.get("error"):
        return RunStatus.FAILED
    return RunStatus.DIVERGED if d.get("diverged") else RunStatus.OK
