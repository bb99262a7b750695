"""One training step's record (`StepRecord`): what the loop measured in that step, and its line of metrics.jsonl.

    rec = StepRecord(step=3, loss=4.2, lr=1e-3, grad_norm=0.8, tokens=1024)
    line = json.dumps(rec.to_json())           # metrics.jsonl: strict JSON, non-finite numbers as null
    StepRecord.from_json(json.loads(line))     # == rec (null read back as NaN)

The fields are the line's keys, in the order the loop has always written them; a field that a step did not
measure is None (False for `skipped`) and has no key in the line, so the file keeps its old form byte for byte:

    step                                                    every step
    max_attn_logit ... log_z                                the stats pass (every `stats_every` steps;
                                                            diagnostics.stats_pass: per layer, tuples)
    qk_clip_max_logit, qk_clip_heads                        with qk_clip (train/qk_clip.py)
    loss, lr, grad_norm, tokens                             every step (loss and norm: train/step.py)
    router_aux_loss                                         every step of a mixture-of-experts model (its
                                                            load-balancing loss, before the coefficient)
    skipped                                                 a non-finite loss or norm: the update was not applied
    val_loss                                                the steps that validated (eval_every, the last)
    time_s                                                  wall time since the run's start (resumes included)

`from_json` refuses a key it does not know and a missing required one (ValueError): a record is read in full or
not at all. tests/train/test_step_record.py checks the fields against what a real run writes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["StepRecord", "STATS_FIELDS"]

Floats = Tuple[float, ...]  # one value a layer


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class StepRecord:
    """What step `step` (0-based) measured (module docstring); non-finite numbers are NaN/inf in memory."""

    step: int
    max_attn_logit: Optional[float] = None  # max over layers (NaN counts as +inf)
    attn_logit_per_layer: Optional[Floats] = None  # exact max attention logit of each layer
    attn_bound_per_layer: Optional[Floats] = None  # Cauchy-Schwarz bound scale * max|q| * max|k|
    q_rms: Optional[Floats] = None  # RMS of q after QK-norm and RoPE, per layer
    k_rms: Optional[Floats] = None
    attn_entropy: Optional[float] = None  # nats, mean over layers
    attn_entropy_per_layer: Optional[Floats] = None
    logit_max: Optional[float] = None  # output logits
    logit_std: Optional[float] = None
    log_z: Optional[float] = None  # mean logsumexp of the output logits
    qk_clip_max_logit: Optional[float] = None  # the largest per-head logit QK-clip saw this step
    qk_clip_heads: Optional[int] = None  # heads above tau (clipped when the update was applied)
    loss: float  # cross-entropy (z-loss excluded), mean over micro-batches and ranks
    lr: float
    grad_norm: float  # before clipping
    tokens: int  # tokens trained on after this step (all ranks)
    router_aux_loss: Optional[float] = None  # a mixture-of-experts model: the load-balancing loss (nn/moe.py)
    skipped: bool = False
    val_loss: Optional[float] = None
    time_s: Optional[float] = None

    def __post_init__(self) -> None:
        for name in _PER_LAYER:  # per-layer values as tuples, whatever sequence they came in
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(v))

    @property
    def has_stats(self) -> bool:
        """The stats pass ran on this step."""
        return self.max_attn_logit is not None

    # Read access by key, as the loop's records were dicts before StepRecord: a callback or script written
    # against them (`record["step"]`, `"val_loss" in record`, `record.get("skipped")`) keeps working. Keys are the
    # measured fields (`present()`); new code reads attributes.
    def __getitem__(self, key: str) -> Any:
        value = self.present().get(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.present()

    def get(self, key: str, default: Any = None) -> Any:
        return self.present().get(key, default)

    def present(self) -> Dict[str, Any]:
        """The measured fields, in metrics.jsonl's order, with their values as in memory (NaN kept)."""
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None or (f.name == "skipped" and not v):
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_json(self) -> Dict[str, Any]:
        """The metrics.jsonl object: `present()` with non-finite numbers as None (strict JSON)."""
        return {k: _finite_or_none(v) for k, v in self.present().items()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "StepRecord":
        """A record from a metrics.jsonl object (None -> NaN); ValueError naming an unknown or missing key."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a metrics record is a JSON object, not {type(d).__name__}")
        unknown = sorted(set(d) - _NAMES)
        if unknown:
            raise ValueError(f"unknown metrics key(s) {', '.join(unknown)}; a step record has "
                             f"{', '.join(_NAMES_IN_ORDER)}")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ValueError(f"metrics record without {', '.join(missing)}")
        return cls(**{k: _from_json_value(k, v) for k, v in d.items()})


_ABSENT = object()


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, list):
        return [_finite_or_none(x) for x in v]
    return v


def _from_json_value(name: str, v: Any) -> Any:
    if name in _INTS:
        return v
    if name == "skipped":
        return bool(v)
    if isinstance(v, list):
        return tuple(math.nan if x is None else x for x in v)
    return math.nan if v is None else v


_NAMES_IN_ORDER = tuple(f.name for f in dataclasses.fields(StepRecord))
_NAMES = frozenset(_NAMES_IN_ORDER)
_REQUIRED = tuple(f.name for f in dataclasses.fields(StepRecord)
                  if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
_INTS = frozenset({"step", "tokens", "qk_clip_heads"})
_PER_LAYER = tuple(f.name for f in dataclasses.fields(StepRecord) if f.type == "Optional[Floats]")
STATS_FIELDS = _NAMES_IN_ORDER[1:_NAMES_IN_ORDER.index("qk_clip_max_logit")]  # what diagnostics.stats_pass measures
