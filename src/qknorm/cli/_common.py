"""Helpers shared by the subcommands: typed `--set key=value` overrides and small argparse types.

`--set` accepts any `ModelConfig` field (qknorm/config.py) and any `TrainConfig` field (train/config.py); the
value is parsed to the field's type:

    int / float          --set d_model=256   --set lr=1e-3
    bool                 --set tie_embeddings=true        (true/false, yes/no, on/off, 1/0)
    None (Optional)      --set n_kv_heads=none            (none / null)
    enum                 --set qk_norm=head               (the allowed values are listed on error)
    tuple of str         --set layer_types=sliding,full   ("sliding"/"full" expand to *_attention)
    str                  --set qk_backend=torch

A malformed value or an unknown key raises ConfigError naming the key and what was expected.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import enum
import os
import re
import sys
import typing
import warnings
from typing import Any, Dict, Tuple

from ..config import ModelConfig
from ..train.config import TrainConfig
from ..errors import ConfigError
from ..train.tensorboard_log import INSTALL_HINT

_TRUE, _FALSE, _NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null")
_LAYER_ALIASES = {"sliding": "sliding_attention", "full": "full_attention"}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage block): `PROG: error: MSG (see PROG --help)`,
    exit status 2. Subparsers made from it are of this class too."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def field_types() -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """({model field: type}, {train field: type}) with string annotations resolved."""
    return typing.get_type_hints(ModelConfig), typing.get_type_hints(TrainConfig)


def parse_value(key: str, raw: str, tp: Any) -> Any:
    """`raw` parsed to type `tp` (as annotated on the dataclass field), or ConfigError naming `key`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if raw.strip().lower() in _NONE:
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(key, raw, inner[0])
    if origin in (tuple, Tuple):
        items = [s.strip() for s in raw.split(",") if s.strip()]
        if not items:
            raise ConfigError(f"--set {key}={raw!r}: expected a comma-separated list")
        return tuple(_LAYER_ALIASES.get(s, s) if key == "layer_types" else s for s in items)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [m.value for m in tp]
        if raw.lower() not in allowed:
            raise ConfigError(f"--set {key}={raw!r}: choose one of: {', '.join(allowed)}")
        return tp(raw.lower())
    if tp is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"--set {key}={raw!r}: expected a boolean (true or false)")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            pass
        try:  # 1e3 -> 1000, but not 1.5
            f = float(raw)
        except ValueError:
            f = None
        if f is not None and f.is_integer():
            return int(f)
        raise ConfigError(f"--set {key}={raw!r}: expected an integer")
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"--set {key}={raw!r}: expected a number (e.g. 3e-3)") from None
    if tp is str:
        return raw
    raise ConfigError(f"--set {key}: cannot be set from the command line (type {tp})")  # pragma: no cover


def parse_set(items) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """`--set` items -> (model overrides, train overrides); ConfigError for a malformed item or unknown key."""
    model_types, train_types = field_types()
    model_over: Dict[str, Any] = {}
    train_over: Dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. --set qk_norm=head)")
        if key in model_types:
            model_over[key] = parse_value(key, raw.strip(), model_types[key])
        elif key in train_types:
            train_over[key] = parse_value(key, raw.strip(), train_types[key])
        else:
            known = sorted(model_types) + sorted(train_types)
            close = difflib.get_close_matches(key.replace("-", "_").lower(), known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"--set {key}: unknown key{hint} (model fields: {', '.join(sorted(model_types))}; "
                              f"training fields: {', '.join(sorted(train_types))})")
    return model_over, train_over


def train_config_field_names() -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def print_line(text: str, file=None) -> None:
    """print() that survives a closed pipe (`qknorm ... | head -1`): once the reader is gone, later output is
    dropped instead of raising BrokenPipeError (the command goes on and ends normally)."""
    stream = file or sys.stdout
    try:
        print(text, file=stream, flush=True)
    except (BrokenPipeError, ValueError):  # ValueError: the stream was already closed
        try:  # point the stream's descriptor at /dev/null so the interpreter's final flush is silent too
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        except (OSError, ValueError):
            pass


@contextlib.contextmanager
def one_line_warnings(prog: str):
    """Warnings (e.g. a skipped damaged checkpoint) as single '<prog>: warning: ...' lines on stderr."""
    def show(message, category, filename, lineno, file=None, line=None):
        print_line(f"{prog}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def to_flags(message: str, field_flags: Dict[str, str]) -> str:
    """`message` with each config field of `field_flags` written as its flag: a field where it starts a
    `field=value`, `field: ...` or `field PATH` phrase (never inside a path or a word); a key holding '='
    (e.g. "force=True" -> "--force") is replaced as written."""
    for field, flag in field_flags.items():
        if "=" in field:
            message = message.replace(field, flag)
        else:
            message = re.sub(rf"(?<![\w/.\-]){re.escape(field)}(?=[=: ])", flag, message)
    return message


# ---------------------------------------------------------------------------------------------- argparse types


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


def positive_float(text: str) -> float:
    v = non_negative_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def add_tensorboard_and_compile(p: argparse.ArgumentParser, *, events_in: str, compile_what: str,
                                compile_default: Any) -> None:
    """--tensorboard and --compile, as `qknorm train` and `qknorm study` both take them: `events_in` says where the
    event files go, `compile_what` what is compiled (and where its cache lives)."""
    p.add_argument("--tensorboard", action="store_true",
                   help=f"also write {events_in} (needs the tensorboard package: {INSTALL_HINT})")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=compile_default,
                   help=f"torch.compile {compile_what}; default off: on CPU a cold compile costs minutes and pays only "
                   "on long runs (docs/study_speed.md); graph breaks and recompiles are reported at the end")
