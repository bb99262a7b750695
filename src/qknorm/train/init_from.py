"""Starting a new run from a pretrained model (`qknorm train --init-from DIR`, `train(..., init_state=...)`):
the run's model config is the source's, and the checks that keep model, data and tokenizer consistent.

* Model fields (`init_config`). A field whose change alters the set or shapes of the parameters is refused:
  the weights would not fit (found by building both models on the meta device, so the rule follows the model
  and cannot drift from it). A field that changes what the model computes without changing its parameters
  (rope_theta, norm_eps, sliding windows, softcaps, ...) is refused unless `allow_changes` (then a warning):
  the run would no longer start from the source's function. `FREE_FIELDS` compute the same function however
  set (the attention and QK-norm kernels; max_seq_len, which bounds nothing) and may be set freely.
* Tokenizer (`init_tokenizer`). The source's tokenizer.json, when it has one, is the run's (the run directory
  keeps a copy). Another one is refused unless `allow_changes`: the same ids would mean other text. A qknorm
  model stored without a tokenizer is byte-level, so any tokenizer differs from it; an HF directory or OLMo-core
  checkpoint without tokenizer.json says nothing about its tokens, so the one given is taken.
* Data. The data's vocabulary must fit the model's (an id >= vocab_size has no embedding): `train` checks it
  (preflight.check_vocab, the one check of that rule).
* Training settings an HF config publishes (`published_aux_coef`): a mixture-of-experts checkpoint's
  router_aux_loss_coef (OLMoE 0.01, Qwen3-MoE 0.001) is the run's unless the command line sets it.

The fresh optimizer and the new schedule need nothing here: `train` builds them as for any new run.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..config import ModelConfig
from ..errors import ConfigError, DataError
from ..model import TransformerLM
from ..plain import plain
from ..pretrained import Pretrained
from ..io.names import TOKENIZER_NAME

__all__ = ["FREE_FIELDS", "init_config", "init_tokenizer", "same_tokenizer", "published_aux_coef"]

FREE_FIELDS = ("attn_impl", "qk_backend", "max_seq_len")


def _shapes(config: ModelConfig) -> Dict[str, tuple]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in TransformerLM(config).state_dict().items()}


def init_config(source: ModelConfig, overrides: Dict[str, Any], *, allow_changes: bool = False,
                where: str = "the source model") -> ModelConfig:
    """`source` with `overrides` applied, after checking each one (module docstring)."""
    base = _shapes(source)
    for key, value in overrides.items():
        one = source.replace(**{key: value})
        if getattr(one, key) == getattr(source, key):
            continue
        shapes = _shapes(one)
        if shapes != base:
            diff = sorted(set(shapes) ^ set(base)) or [k for k in sorted(base) if shapes[k] != base[k]]
            name = diff[0]
            what = (f"{name} {base[name]} -> {shapes[name]}" if name in base and name in shapes else
                    f"{'adds' if name in shapes else 'removes'} {name}")
            raise ConfigError(f"{key}={plain(value)!r} changes the shape of {where} ({what}); a run started from a "
                              f"model keeps its shape (it has {key}={plain(getattr(source, key))!r})")
        if key in FREE_FIELDS:
            continue
        msg = (f"{key}={plain(value)!r} changes what {where} computes (it has {key}={plain(getattr(source, key))!r}),"
               " so the run would not start from its function")
        if not allow_changes:
            raise ConfigError(msg + "; allow_changes=True to train with the change")
        warnings.warn(msg + ": continuing with the change as asked", RuntimeWarning, stacklevel=2)
    return source.replace(**overrides) if overrides else source


def same_tokenizer(a: Path, b: Path) -> bool:
    """The two tokenizer.json files describe the same tokenizer (equal bytes, or equal parsed JSON)."""
    da, db = Path(a).read_bytes(), Path(b).read_bytes()
    if da == db:
        return True
    try:
        return json.loads(da) == json.loads(db)
    except ValueError:
        return False


def init_tokenizer(src: Pretrained, given: Optional[str], *, allow_changes: bool = False) -> Optional[str]:
    """The tokenizer file the run's text data is encoded with (module docstring); None = bytes."""
    if given is None:
        return str(src.tokenizer) if src.tokenizer is not None else None
    given_path = Path(given)
    if given_path.is_dir() and (given_path / TOKENIZER_NAME).is_file():
        given_path = given_path / TOKENIZER_NAME
    if not given_path.is_file():
        raise DataError(f"tokenizer {given}: file not found")
    if src.tokenizer is not None and same_tokenizer(given_path, src.tokenizer):
        return str(given_path)
    if src.tokenizer is None and not src.is_ours:
        return str(given_path)  # an HF or OLMo-core model without tokenizer.json: nothing to contradict
    has = (f"its own {src.tokenizer}" if src.tokenizer is not None else
           "no tokenizer.json, so it reads bytes (token = byte value)")
    msg = f"tokenizer={given} differs from the tokenizer of init_from {src.path} ({has}); the same ids would mean " \
          "other text"
    if not allow_changes:
        raise ConfigError(msg + "; leave tokenizer unset to use the model's, or allow_changes=True")
    warnings.warn(msg + ": continuing with it as asked", RuntimeWarning, stacklevel=2)
    return str(given_path)


def published_aux_coef(src: Pretrained) -> Optional[float]:
    """router_aux_loss_coef of an HF mixture-of-experts source's config.json, or None (a dense model, another
    format, the field absent or not a non-negative number)."""
    if not src.format.startswith("hf/") or not src.model.config.n_experts:
        return None
    from ..interop.hf_config import text_config
    from ..io.names import CONFIG_NAME

    try:
        cfg, _ = text_config(json.loads((src.path / CONFIG_NAME).read_text()), source=str(src.path))
    except (OSError, ValueError):
        return None
    v = cfg.get("router_aux_loss_coef")
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
    return float(v) if ok else None
