"""`Choice`: the str enum every config choice uses, whose parse error names the field and the allowed values.

Its own module because the model config (config.py), the RoPE variants (rope_scaling.py) and the layers (nn/) use
it, and the config imports the RoPE record: a shared name in any of those files would make an import circle.
"""
from __future__ import annotations

import enum
from typing import Any

from .errors import ConfigError


class Choice(str, enum.Enum):
    """A str enum whose constructor error names the allowed values."""

    @classmethod
    def parse(cls, field: str, value: Any) -> "Choice":
        if isinstance(value, cls):
            return value
        if isinstance(value, enum.Enum):  # another str enum with the same values
            value = value.value
        try:
            return cls(str(value).lower())
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise ConfigError(f"{field}={value!r} is not allowed; choose one of: {allowed}") from None
