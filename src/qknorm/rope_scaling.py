"""RoPE scaling, as data: which variant of rotary position embedding a model uses and its parameters.

`RopeScaling` is part of a model's config (config.py `ModelConfig.rope_scaling`) and of Hugging Face's
(`rope_parameters` / `rope_scaling`, interop/hf_rope.py); the tables each variant gives are computed in
nn/rope.py, whose docstring describes the variants. Plain RoPE is `None`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

from .choice import Choice
from .errors import ConfigError

__all__ = ["RopeType", "RopeScaling"]


class RopeType(Choice):
    LINEAR = "linear"
    LLAMA3 = "llama3"
    YARN = "yarn"


# fields each variant reads besides `factor`: (required, optional)
_FIELDS: Dict[RopeType, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    RopeType.LINEAR: ((), ()),
    RopeType.LLAMA3: (("original_max_position_embeddings", "low_freq_factor", "high_freq_factor"), ()),
    RopeType.YARN: (("original_max_position_embeddings",), ("beta_fast", "beta_slow", "attention_factor",
                                                            "truncate")),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """A scaled RoPE variant (plain RoPE is `None`). Serialized as {"rope_type": ..., "factor": ..., ...} with
    only the fields the variant uses, the names being transformers' `rope_parameters` keys."""

    rope_type: RopeType
    factor: float  # context extension factor (> 0)
    original_max_position_embeddings: Optional[int] = None  # llama3, yarn: the pre-extension context length
    low_freq_factor: Optional[float] = None  # llama3 (Llama 3.1/3.2: 1)
    high_freq_factor: Optional[float] = None  # llama3 (Llama 3.1/3.2: 4)
    beta_fast: Optional[float] = None  # yarn: None = 32
    beta_slow: Optional[float] = None  # yarn: None = 1
    attention_factor: Optional[float] = None  # yarn: cos/sin amplitude; None = 0.1 ln(factor) + 1 (factor > 1)
    truncate: Optional[bool] = None  # yarn: round the correction range to whole dims; None = true

    def __post_init__(self) -> None:
        object.__setattr__(self, "rope_type", RopeType.parse("rope_scaling.rope_type", self.rope_type))
        _positive("rope_scaling.factor", self.factor)
        required, optional = _FIELDS[self.rope_type]
        for name in _ALL_EXTRA:
            value = getattr(self, name)
            if name in required and value is None:
                raise ConfigError(f"rope_scaling.{name} is required for rope_type={self.rope_type.value!r}")
            if value is not None and name not in required + optional:
                reads = ", ".join(("factor",) + required + optional)
                raise ConfigError(f"rope_scaling.{name}={value!r} does not apply to rope_type="
                                  f"{self.rope_type.value!r} (it reads: {reads})")
        if self.original_max_position_embeddings is not None:
            v = self.original_max_position_embeddings
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"rope_scaling.original_max_position_embeddings={v!r} must be an integer >= 1")
        for name in ("low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow", "attention_factor"):
            if getattr(self, name) is not None:
                _positive(f"rope_scaling.{name}", getattr(self, name))
        # equal factors (Llama 4 Scout: 1 and 1) leave no band to blend: every wave is either kept or interpolated
        if self.rope_type is RopeType.LLAMA3 and not self.high_freq_factor >= self.low_freq_factor:
            raise ConfigError(f"rope_scaling.high_freq_factor={self.high_freq_factor} must be at least "
                              f"low_freq_factor={self.low_freq_factor}")
        if self.truncate is not None and not isinstance(self.truncate, bool):
            raise ConfigError(f"rope_scaling.truncate={self.truncate!r} must be true or false")

    @property
    def attention_scaling(self) -> float:
        """The factor on cos and sin: YaRN's attention factor, else 1."""
        if self.rope_type is not RopeType.YARN:
            return 1.0
        if self.attention_factor is not None:
            return self.attention_factor
        return 0.1 * math.log(self.factor) + 1.0 if self.factor > 1 else 1.0

    def to_dict(self) -> Dict[str, Any]:
        out = {"rope_type": self.rope_type.value, "factor": self.factor}
        out.update({n: getattr(self, n) for n in _ALL_EXTRA if getattr(self, n) is not None})
        return out

    @classmethod
    def from_value(cls, value: Any, *, field: str = "rope_scaling") -> Optional["RopeScaling"]:
        """None, a RopeScaling, a dict as `to_dict` writes it, or a number (the form configs saved before RoPE
        variants existed: a linear factor, 1 = unscaled)."""
        if value is None or isinstance(value, RopeScaling):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _positive(field, value)
            return None if value == 1 else cls(rope_type=RopeType.LINEAR, factor=float(value))
        if isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError(f"{field}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
            if "rope_type" not in value or "factor" not in value:
                raise ConfigError(f"{field}={value!r} needs 'rope_type' and 'factor'")
            return cls(**value)
        raise ConfigError(f"{field}={value!r} must be null, a linear factor, or an object with rope_type and factor")


_ALL_EXTRA = tuple(f.name for f in dataclasses.fields(RopeScaling))[2:]


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ConfigError(f"{name}={value!r} must be a positive number")
