"""A pretrained model from any directory qknorm reads, with what identifies it: where it came from, the
sha256 of the files holding its weights, and the tokenizer stored beside it.

    src = load_pretrained("runs/llama")                  # our model dir, a run dir, any training checkpoint
    src = load_pretrained("path/to/Qwen3-0.6B")          # an HF directory of a supported family
    src.model, src.tokenizer, src.record()

Starting something new from a model (`qknorm train --init-from`, `qknorm retrofit --from`) needs all three:
the weights, the tokenizer the model was trained with (token ids mean nothing without it), and a record that
says exactly which weights were used (`record()`: path, format and the sha256 of every weight file, each
checkable with `sha256sum`). An HF directory is told from ours by its config.json (no "qknorm_config" key);
it is read with json + safetensors only (interop/hf.py).
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from .errors import CheckpointError
from .io.files import read_json
from .interop.hf import from_hf
from .interop.hf_config import text_config
from .model import TransformerLM
from .data.tokenizer import load_tokenizer as read_tokenizer
from .io.model_dir import find_tokenizer, load_model, model_source
from .io.names import CONFIG_NAME, INDEX_NAME, TOKENIZER_NAME, WEIGHTS_NAME
from .io.checkpoints.layout import file_digest
from .io.checkpoints.model_state import is_checkpoint_dir
from .io.checkpoints.sharded import STATE_DIR

__all__ = ["Pretrained", "load_pretrained", "is_hf_dir", "load_tokenizer"]


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A loaded model and what identifies it."""

    model: TransformerLM  # in the dtype it was stored in, on CPU
    path: Path  # the directory the weights were read from (a run directory resolves to its model or checkpoint)
    format: str  # "qknorm" or "hf/<model_type>"
    tokenizer: Optional[Path]  # the tokenizer.json stored with it; None = none (byte-level for our models)
    weight_files: Tuple[Tuple[str, str], ...]  # (file relative to `path`, sha256) of every file holding weights

    @property
    def is_hf(self) -> bool:
        return self.format.startswith("hf/")

    def record(self) -> Dict[str, Any]:
        """JSON-able: {"path", "format", "weights_sha256": {file: sha256}, "tokenizer"}."""
        return {"path": str(self.path.resolve()), "format": self.format,
                "weights_sha256": dict(self.weight_files),
                "tokenizer": self.tokenizer.name if self.tokenizer is not None else None}


def is_hf_dir(path: Union[str, Path]) -> bool:
    """A directory whose config.json is an HF config (it has no "qknorm_config" key)."""
    cfg = Path(path) / CONFIG_NAME
    if not cfg.is_file():
        return False
    raw = read_json(cfg)
    return not (isinstance(raw, dict) and "qknorm_config" in raw)


def load_pretrained(path: Union[str, Path]) -> Pretrained:
    """The model at `path` (see the module docstring); CheckpointError naming the file when it cannot be read."""
    d = Path(path)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory (expected a qknorm model, run or checkpoint directory, or an "
                              f"HF directory with {CONFIG_NAME} and *.safetensors)")
    if is_hf_dir(d):
        model = from_hf(d)
        model_type, _ = _hf_model_type(d)
        return Pretrained(model=model, path=d, format=f"hf/{model_type}", tokenizer=_tokenizer(d),
                          weight_files=_digests(d, _hf_weight_files(d)))
    with warnings.catch_warnings():  # model_source warns when a run has no final model: say it once, here
        warnings.simplefilter("ignore")
        src = model_source(d)
    if src != d:
        warnings.warn(f"{d} has no final model yet; using its newest checkpoint {src.name}", UserWarning,
                      stacklevel=2)
    model = load_model(src)
    return Pretrained(model=model, path=src, format="qknorm", tokenizer=_tokenizer(src) or _tokenizer(d),
                      weight_files=_digests(src, _qknorm_weight_files(src)))


def _hf_model_type(d: Path) -> Tuple[str, Dict[str, Any]]:
    cfg, fam = text_config(read_json(d / CONFIG_NAME), source=str(d / CONFIG_NAME))
    return fam.model_type, cfg


def _tokenizer(d: Path) -> Optional[Path]:
    return d / TOKENIZER_NAME if (d / TOKENIZER_NAME).is_file() else None


def _hf_weight_files(d: Path) -> list:
    """The safetensors files from_hf read (the index's shards, model.safetensors, or the single file)."""
    if (d / INDEX_NAME).is_file():
        index = read_json(d / INDEX_NAME)
        return sorted(set(index["weight_map"].values()))
    if (d / WEIGHTS_NAME).is_file():
        return [WEIGHTS_NAME]
    return [p.name for p in sorted(d.glob("*.safetensors"))]


def _qknorm_weight_files(d: Path) -> list:
    """model.safetensors of a model dir or full checkpoint; every file of a sharded checkpoint's state."""
    if (d / WEIGHTS_NAME).is_file() or not is_checkpoint_dir(d):
        return [WEIGHTS_NAME]
    return sorted(p.relative_to(d).as_posix() for p in (d / STATE_DIR).rglob("*") if p.is_file())


def _digests(d: Path, names) -> Tuple[Tuple[str, str], ...]:
    return tuple((name, file_digest(d / name)["sha256"]) for name in names)


def load_tokenizer(path: Union[str, Path]):
    """The `tokenizers.Tokenizer` stored with the model at `path` (load_model's argument), or None when the
    model has none (byte-level: token = byte value)."""
    found = find_tokenizer(model_source(path)) or find_tokenizer(path)
    return read_tokenizer(found)[0] if found is not None else None
