"""What must hold before a training run writes anything: the run directory, and that the settings fit the
model, the data and this machine. Every check raises a one-line error naming the field; a run that fails here
leaves its output directory exactly as it was.

* out_dir: a fresh run needs an absent or empty directory; a resumed one a checkpoints/ directory in it.
* vocab_size: the model's vocabulary must hold the data's (`check_vocab`, also used by retrofit).
* batch_size: the global batch splits evenly over the data-parallel processes (`check_batch_split`; that
  grad_accum divides it is TrainConfig's own check).
* seq_len <= max_seq_len of the model (raise max_seq_len for longer sequences).
* the model's weights alone (2 bytes a parameter, the least any dtype needs) must fit in the device's total
  memory: a config declaring 10**9 hidden units (a run.json edited by someone else, a typo in --set) is one
  line naming the fields, not an allocation failure or an out-of-memory kill while the model is built.
* the attention-statistics pass (stats_every > 0) materializes fp32 scores of shape (S, H, T, T) for S <= 4
  sequences, per layer, plus a copy for the mask: if that needs more than half the memory available on the
  device, the run is refused before it starts (a bigger allocation would fail minutes later, or swap).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..io.names import CKPT_DIR
from .config import TrainConfig
from ..data.tokens import TokenData

__all__ = ["check_out_dir", "check_fits", "check_vocab", "check_batch_split", "stats_pass_bytes", "available_bytes",
           "total_bytes", "STATS_SEQS"]

STATS_SEQS = 4  # sequences of the batch the stats pass sees


def check_out_dir(out: str | Path, resume: bool) -> None:
    """A fresh run needs an absent or empty directory; a resumed one a checkpoints/ directory in it."""
    out = Path(out)
    if resume:
        if not (out / CKPT_DIR).is_dir():
            raise CheckpointError(f"{out}: nothing to resume (no {CKPT_DIR}/ directory; was it trained with "
                                  "ckpt_every=0?)")
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ConfigError(f"out_dir {out} is not empty ({shown}); continue the run there with resume=True or "
                          "choose another output directory")


def stats_pass_bytes(model_config: ModelConfig, cfg: TrainConfig, local_batch: int) -> int:
    """Peak bytes of one layer's exact attention statistics: fp32 scores and their masked copy."""
    seqs = min(STATS_SEQS, local_batch)
    return 2 * seqs * model_config.n_heads * cfg.seq_len * cfg.seq_len * 4


def available_bytes(device: str) -> Optional[int]:
    """Memory available for new allocations on `device` (free GPU memory, or available RAM); None if unknown."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def total_bytes(device: str) -> Optional[int]:
    """All the memory of `device` (the GPU's, or physical RAM); None if unknown."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[1])
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_vocab(model_config: ModelConfig, data: TokenData, *, fixed_by: Optional[str] = None) -> None:
    """ConfigError naming vocab_size when the data's ids do not all fit the model's vocabulary (an id >= vocab_size
    has no embedding). `fixed_by`: what fixes the model's vocabulary (pretrained weights), so the data must change."""
    if data.vocab_size > model_config.vocab_size:
        fix = (f"use data tokenized with the tokenizer of {fixed_by}" if fixed_by else
               f"set vocab_size >= {data.vocab_size}")
        raise ConfigError(f"vocab_size={model_config.vocab_size} of the model is smaller than the data's vocabulary "
                          f"({data.vocab_size} tokens, {data.source}); {fix}")


def check_batch_split(cfg: TrainConfig, dp_size: int) -> int:
    """The sequences each data-parallel process takes per step; ConfigError naming batch_size when the global batch
    does not split evenly over `dp_size` processes x grad_accum micro-batches (TrainConfig checked grad_accum)."""
    if (cfg.batch_size // cfg.grad_accum) % dp_size:
        raise ConfigError(f"batch_size={cfg.batch_size} must split evenly over {dp_size} data-parallel "
                          f"process(es) x grad_accum={cfg.grad_accum} micro-batches")
    return cfg.batch_size // dp_size


def check_fits(model_config: ModelConfig, cfg: TrainConfig, data: TokenData, local_batch: int, *,
               fixed_vocab: Optional[str] = None) -> None:
    """The settings fit the model, the data and this machine (see the module docstring); `fixed_vocab`: as
    check_vocab's `fixed_by`."""
    weights, total = 2 * model_config.num_params(), total_bytes(cfg.device)
    if total is not None and weights > total:
        c = model_config
        raise ConfigError(f"the model (d_model={c.d_model}, n_layers={c.n_layers}, d_ff={c.d_ff}, vocab_size="
                          f"{c.vocab_size}) has {c.num_params():,} parameters: {weights / 1e9:.3g} GB even at 2 bytes "
                          f"each, more than the {total / 1e9:.3g} GB of memory on {cfg.device}")
    check_vocab(model_config, data, fixed_by=fixed_vocab)
    if cfg.seq_len > model_config.max_seq_len:
        raise ConfigError(f"seq_len={cfg.seq_len} is longer than the model's max_seq_len={model_config.max_seq_len}; "
                          "use a shorter seq_len or raise the model's max_seq_len")
    if cfg.stats_every:
        need, have = stats_pass_bytes(model_config, cfg, local_batch), available_bytes(cfg.device)
        if have is not None and need > have // 2:
            raise ConfigError(
                f"stats_every={cfg.stats_every}: the attention-statistics pass at seq_len={cfg.seq_len} needs "
                f"~{need / 1e9:.3g} GB ({min(STATS_SEQS, local_batch)} sequences x {model_config.n_heads} heads x "
                f"{cfg.seq_len}^2 fp32 scores, twice), more than half the {have / 1e9:.3g} GB available; use a "
                "shorter seq_len or stats_every=0")
