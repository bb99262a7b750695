"""Resuming a run: the plan (what the run recorded, with the changes asked for) and the rules a resume must keep.
`qknorm train --resume` and `train(..., resume=True)` share both.

Plan (`plan_resume`). Everything comes from the run's record (run.json; manifest.py): the model config, the
training settings and the data (the run's copy of its tokenizer). Changes are applied on top: training settings,
model fields, another preset or size, other data or tokenizer. A recorded tp that does not divide this launch's
process count falls back to 1 (checkpoints reshard), with a note, unless tp is one of the changes. A run of an
older version without run.json is planned from its newest checkpoint (its data cannot be known: the default
corpus unless data is given).

Rules (`check_resume`, called by `train` before anything is written), each checked here and nowhere else:
* a training setting that changes the trajectory (not FREE_ON_RESUME) must be the recorded one: ConfigError
  naming the field and the recorded value, unless allow_changes (then train warns when it loads the checkpoint);
* the optimizer must be the recorded one, even with allow_changes (the checkpoints hold its state): ConfigError;
* the data's fingerprint must be the recorded one: DataError, or a warning with allow_changes;
* the model must be the checkpoint's: the checkpoint load refuses another, naming the field (CheckpointError).
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..config import ModelConfig
from ..data.tokens import TokenData, load_tokens
from ..errors import ConfigError, DataError
from ..io.names import RUN_RECORD, TOKENIZER_NAME
from ..plain import plain
from ..presets import get_config
from .config import FREE_ON_RESUME, TrainConfig
from .init_from import init_config
from .manifest import RunManifest, legacy_model_config, legacy_train_config
from .run_dir import RunDir
from .runtimes import world_size_from_env

__all__ = ["ResumePlan", "plan_resume", "check_resume", "preset_model", "preset_origin"]


@dataclasses.dataclass(frozen=True)
class ResumePlan:
    """What a resumed run trains: the model and training configs, the data, the origin it records, and notes for
    the user (a tp fallback, a grown vocabulary)."""

    run_dir: RunDir
    model_config: ModelConfig
    cfg: TrainConfig
    data: TokenData
    origin: Dict[str, Any]
    notes: Tuple[str, ...] = ()


def preset_model(preset: str, size: str, overrides: Dict[str, Any], data: TokenData, notes: List[str]) -> ModelConfig:
    """The preset's config with the overrides; its vocabulary grown to the data's unless vocab_size is one of them
    (a vocab_size too small for the data is refused by train: preflight.check_vocab)."""
    config = get_config(preset, size, **overrides)
    if data.vocab_size > config.vocab_size and "vocab_size" not in overrides:
        config = config.replace(vocab_size=data.vocab_size)
        notes.append(f"vocab_size set to the data's vocabulary: {data.vocab_size}")
    return config


def preset_origin(preset: str, size: str, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """The run record's origin of a model built from a preset."""
    return {"preset": preset, "size": size, "overrides": plain(overrides)}


def plan_resume(out: Union[str, Path, RunDir], *, train_changes: Optional[Dict[str, Any]] = None,
                model_changes: Optional[Dict[str, Any]] = None, data: Union[str, Path, TokenData, None] = None,
                tokenizer: Optional[str] = None, preset: Optional[str] = None, size: Optional[str] = None,
                allow_changes: bool = False) -> ResumePlan:
    """The run in `out` as recorded, with these changes (module docstring). `data`: a data path as `load_tokens`
    reads it, or the tokens themselves; None = the recorded data."""
    run_dir = RunDir.check(out, resume=True)
    path, train_changes, model_changes = run_dir.path, dict(train_changes or {}), dict(model_changes or {})
    record = RunManifest.read(path)
    saved = record.train_config if record else legacy_train_config(path)
    base = TrainConfig.from_dict(saved, source=str(path / RUN_RECORD)) if saved else TrainConfig()
    cfg = base.replace(**train_changes)
    notes: List[str] = []
    world = world_size_from_env()
    if "tp" not in train_changes and cfg.tp > 1 and world % cfg.tp:  # the launch, not the run, sets the layout
        notes.append(f"the run recorded tp={cfg.tp}; this launch has {world} process(es): resuming with tp=1 "
                     "(checkpoints reshard)")
        cfg = cfg.replace(tp=1)
    tokens = data if isinstance(data, TokenData) else _load_data(path, record, data, tokenizer)
    origin = dict(record.origin) if record else {}
    recorded_model = record.model_config if record else legacy_model_config(path)
    if preset is None and size is None and not model_changes and recorded_model:
        config = ModelConfig.from_dict(recorded_model, source=str(path / RUN_RECORD) if record else
                                       f"the newest checkpoint in {path}")
    else:  # the model the changes describe; a different one is refused by the checkpoint, naming the field
        preset = preset or origin.get("preset")
        if preset is None and record is not None and "init_from" in origin:  # a run started from a model
            config = init_config(ModelConfig.from_dict(record.model_config), model_changes,
                                 allow_changes=allow_changes, where=f"the run in {path}")
            return ResumePlan(run_dir, config, cfg, tokens, origin, tuple(notes))
        if preset is None:
            raise ConfigError(f"{path} has no run record: give preset=NAME (and the size and model fields) of the run "
                              "to resume it")
        size = size or origin.get("size") or "debug"
        config = preset_model(preset, size, {**origin.get("overrides", {}), **model_changes}
                              if preset == origin.get("preset") else model_changes, tokens, notes)
        origin = preset_origin(preset, size, model_changes)
    return ResumePlan(run_dir, config, cfg, tokens, origin, tuple(notes))


def _load_data(out: Path, record: Optional[RunManifest], spec: Union[str, Path, None],
               tokenizer: Optional[str]) -> TokenData:
    """The recorded data (with the run's copy of its tokenizer), or `spec` / `tokenizer` where given."""
    tok_copy = out / TOKENIZER_NAME
    if record is not None and spec is None and tokenizer is None:
        return record.data.load(tokenizer=str(tok_copy) if record.data.tokenizer and tok_copy.is_file() else None)
    return load_tokens(str(spec) if spec is not None else (record.data.spec if record else None),
                       tokenizer=tokenizer or (str(tok_copy) if tok_copy.is_file() else None))


def check_resume(out: Path, now: RunManifest, allow_changes: bool) -> None:
    """The rules of the module docstring that the record decides (settings, optimizer, data); nothing is written."""
    saved = RunManifest.read(out)
    recorded = saved.train_config if saved else legacy_train_config(out)
    if recorded:
        was = TrainConfig.from_dict(recorded, source=str(out / RUN_RECORD)).to_dict()
        changed = [(k, v) for k, v in now.train_config.items() if k not in FREE_ON_RESUME and v != was[k]]
        if changed and not allow_changes:
            k, v = changed[0]
            raise ConfigError(f"{k}={v!r} contradicts the run's record ({k} was {was[k]!r} in {out / RUN_RECORD}); "
                              "continue as recorded, or allow_changes=True to resume with the change")
        if was["optimizer"] != now.train_config["optimizer"]:  # not even allowed: the checkpoints hold its state
            want = now.train_config["optimizer"]
            raise ConfigError(f"optimizer={want!r} cannot resume {out}: its checkpoints hold {was['optimizer']!r} "
                              f"optimizer state ({RUN_RECORD}); resume with optimizer={was['optimizer']!r}")
    if saved is None:
        warnings.warn(f"{out} has no {RUN_RECORD} (a run of an older version): the data cannot be checked "
                      "against the run's", RuntimeWarning, stacklevel=3)
        return
    if saved.data.fingerprint != now.data.fingerprint:
        msg = (f"the data differ from the run's record ({out / RUN_RECORD}: {saved.data.describe()}, "
               f"{saved.data.fingerprint.n_tokens:,} tokens, sha256 {saved.data.fingerprint.sha256[:12]}; now "
               f"{now.data.describe()}, {now.data.fingerprint.n_tokens:,} tokens, sha256 "
               f"{now.data.fingerprint.sha256[:12]})")
        if not allow_changes:
            raise DataError(msg + "; resume on the recorded data, or allow_changes=True to continue on these")
        warnings.warn(msg + ": continuing on the new data as asked", RuntimeWarning, stacklevel=3)
