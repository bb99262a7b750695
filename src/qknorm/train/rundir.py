"""The run directory of `train(out_dir=...)`: what must hold before a run starts writing there.

A fresh run needs an absent or empty directory; a resumed one a `checkpoints/` directory in it. Checked before
anything is created, so bad input leaves the directory as it was.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, ConfigError
from .checkpoints.layout import CKPT_DIR

__all__ = ["check_out_dir"]


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
