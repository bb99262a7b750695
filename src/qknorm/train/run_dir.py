"""`RunDir`: a run directory, checked once for its use, that `train` and the command line pass along.

`RunDir.check(out, resume)` runs the directory rule once (preflight.check_out_dir: a fresh run needs an absent or
empty directory, a resumed one its checkpoints/). The command line checks it before it reads any data and hands
the `RunDir` to the resume plan (resume.py) and to `train`, which take it as checked; `train` given a path checks
it itself. Either way the rule runs once per run.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from .preflight import check_out_dir

__all__ = ["RunDir"]


@dataclasses.dataclass(frozen=True)
class RunDir:
    """A run directory that passed check_out_dir for a fresh run (`resume=False`) or a resumed one."""

    path: Path
    resume: bool

    @classmethod
    def check(cls, out: "str | Path | RunDir", resume: bool) -> "RunDir":
        """`out` checked for a fresh or resumed run (CheckpointError / ConfigError naming the directory); a RunDir
        already checked for the same use is returned as it is."""
        if isinstance(out, RunDir):
            if out.resume != resume:
                raise ConfigError(f"out_dir {out.path} was checked for a {'resumed' if out.resume else 'fresh'} run; "
                                  f"this is a {'resumed' if resume else 'fresh'} one (resume={resume})")
            return out
        check_out_dir(out, resume)
        return cls(Path(out), resume)

    @classmethod
    def of(cls, out: "str | Path | RunDir | None", resume: bool) -> Optional["RunDir"]:
        """`check(out, resume)`, or None without a directory."""
        return None if out is None else cls.check(out, resume)
