"""`plain`: a config value as JSON holds it, the one conversion every record writer uses.

An enum becomes its value (configs store "bf16", "head", "pre"), a tuple a list, a record with `to_dict` (RopeScaling)
its dict, and a dict its keys' plain values; anything else is returned as it is. ModelConfig.to_dict,
TrainConfig.to_dict, the run record's origin (the --set overrides) and the error messages that quote a field's
value all go through it, so a value reads the same in run.json, in a checkpoint and in an error line.
"""
from __future__ import annotations

import enum
from typing import Any

__all__ = ["plain"]


def plain(value: Any) -> Any:
    """`value` as JSON holds it (module docstring)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value
