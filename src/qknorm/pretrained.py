"""Every model qknorm reads, through one function: `open_model(path) -> Pretrained`, the model with what
identifies it (where it came from, its format, the sha256 of the files holding its weights, the tokenizer stored
beside it).

    src = qknorm.open_model("runs/llama")          # our model dir, a run dir, any training checkpoint (full or sharded)
    src = qknorm.open_model("path/to/Qwen3-0.6B")  # an HF directory of a supported family
    src = qknorm.open_model("olmo/step10000")      # an OLMo-core trainer checkpoint (step directory or its DCP folder)
    src.model, src.tokenizer, src.record()

Every command that reads a model calls it (`inspect`, `generate`, `convert`, `train --init-from`, `retrofit
--from`), so each reads the same sources. The source is told by its files, in this order: an OLMo-core step
directory (model_and_optim/.metadata: its config.json is OLMo-core's run config); an HF directory (config.json
without a "qknorm_config" key; read with json + safetensors only, interop/hf.py); else ours (io/model_dir.py:
a model directory, a training checkpoint, or a run directory whose newest checkpoint stands in for a final model
not written yet, with a warning). A path to a config.json names its directory.

Starting something new from a model (`train --init-from`, `retrofit --from`) needs all three parts: the weights,
the tokenizer the model was trained with (token ids mean nothing without it), and a record that says exactly
which weights were used (`record()`: path, format and the sha256 of every weight file, each checkable with
`sha256sum`).
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from .data.tokenizer import load_tokenizer as read_tokenizer
from .errors import CheckpointError, ConfigError
from .interop.hf import from_hf
from .interop.hf_config import text_config
from .interop.olmo_core import find_olmo_core_checkpoint, from_olmo_core, is_olmo_core_checkpoint
from .io.checkpoints.layout import file_digest
from .io.checkpoints.model_state import is_checkpoint_dir
from .io.checkpoints.sharded import STATE_DIR
from .io.files import read_json
from .io.model_dir import find_tokenizer, load_model as load_our_model, model_source
from .io.names import CONFIG_NAME, INDEX_NAME, TOKENIZER_NAME, WEIGHTS_NAME
from .model import TransformerLM

__all__ = ["Pretrained", "open_model", "load_model", "is_hf_dir", "load_tokenizer", "OLMO_CORE"]

OLMO_CORE = "olmo-core"  # `Pretrained.format` of an OLMo-core trainer checkpoint


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A loaded model and what identifies it."""

    model: TransformerLM  # in the dtype it was stored in, on CPU
    path: Path  # the directory the weights were read from (a run directory resolves to its model or checkpoint)
    format: str  # "qknorm", "hf/<model_type>" or "olmo-core"
    tokenizer: Optional[Path]  # the tokenizer.json stored with it; None = none (byte-level for our models)
    weight_files: Tuple[Tuple[str, str], ...]  # (file relative to `path`, sha256) of every file holding weights

    @property
    def is_hf(self) -> bool:
        return self.format.startswith("hf/")

    @property
    def is_ours(self) -> bool:
        return self.format == "qknorm"

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


def open_model(path: Union[str, Path], *, kind: Optional[str] = None, max_seq_len: Optional[int] = None,
               allow_folded: bool = False) -> Pretrained:
    """The model at `path`, of any source qknorm reads (module docstring); CheckpointError naming the file when it
    cannot be read. `kind` ("qknorm", "hf" or "olmo-core"; None = told by the files) reads `path` as that source
    whatever it holds, so an explicit choice fails with that reader's own error. `max_seq_len` replaces the context
    length an HF or OLMo-core config states (ours record their own: ConfigError); `allow_folded` is `from_hf`'s
    (Gemma norm gains already stored as 1 + w)."""
    if kind not in (None, "qknorm", "hf", OLMO_CORE):
        raise ConfigError(f"kind={kind!r} is not allowed; choose one of: qknorm, hf, {OLMO_CORE}")
    d = Path(path)
    if d.is_file() and d.name == CONFIG_NAME:
        d = d.parent
    if kind is None and not d.is_dir():
        raise CheckpointError(f"{d}: not a model directory (expected a qknorm model, run or checkpoint directory, an "
                              f"HF directory with {CONFIG_NAME} and *.safetensors, or an OLMo-core checkpoint)")
    if kind == OLMO_CORE or kind is None and is_olmo_core_checkpoint(d):  # its config.json is a run config
        model = from_olmo_core(d, max_seq_len=max_seq_len)
        dcp_dir = find_olmo_core_checkpoint(d).dcp_dir
        files = sorted(p.relative_to(d).as_posix() for p in dcp_dir.iterdir() if p.is_file())
        return Pretrained(model=model, path=d, format=OLMO_CORE, tokenizer=_tokenizer(d),
                          weight_files=_digests(d, files))
    if kind == "hf" or kind is None and is_hf_dir(d):
        model = from_hf(d, max_seq_len=max_seq_len, allow_folded=allow_folded)
        model_type, _ = _hf_model_type(d)
        return Pretrained(model=model, path=d, format=f"hf/{model_type}", tokenizer=_tokenizer(d),
                          weight_files=_digests(d, _hf_weight_files(d)))
    if max_seq_len is not None:
        raise ConfigError(f"max_seq_len applies to HF and OLMo-core models; {d} is a qknorm model, whose config "
                          "records its own")
    with warnings.catch_warnings():  # model_source warns when a run has no final model: say it once, here
        warnings.simplefilter("ignore")
        src = model_source(d)
    if src != d:
        warnings.warn(f"{d} has no final model yet; using its newest checkpoint {src.name}", UserWarning,
                      stacklevel=2)
    model = load_our_model(src)
    return Pretrained(model=model, path=src, format="qknorm", tokenizer=_tokenizer(src) or _tokenizer(d),
                      weight_files=_digests(src, _qknorm_weight_files(src)))


def load_model(path: Union[str, Path], *, device=None, dtype=None) -> TransformerLM:
    """`open_model(path).model`, moved to `device` / cast to `dtype` (None: as stored, on CPU)."""
    return open_model(path).model.to(device=device, dtype=dtype)


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
