"""`TrainConfig.compile`: torch.compile of the training forward (and, through AOTAutograd, its backward), and the
report of what dynamo did (graphs, graph breaks with their reasons, recompiles).

Only the training step's model call is compiled; the stats pass (which records attention internals) and
validation (no_grad, another batch size) stay eager, so they add no graphs or recompiles. Parameters are
inputs of the graph (dynamo inlines nn.Modules), so a second model of the same shape in the same process — the
next run of a study worker — reuses the compiled graph without tracing again; each variant (another forward)
adds its own graph, and the recompile limit is raised to `RECOMPILE_LIMIT` so that a study's variants do not
silently fall back to eager. Inductor's compiled kernels are cached on disk (TORCHINDUCTOR_CACHE_DIR; the
study points every worker at one directory under its output, so a variant is compiled cold once per study).

Cost on CPU (docs/study_speed.md, bench/results/study_speed_2026-12-07.md): a cold compile of a small model
takes ~10 s of this process's CPU plus inductor's compile workers (minutes of wall time on a loaded 2-core
machine); a warm one (kernels cached on disk) ~1.5-3 s per process and variant.

Not with ATEN_CPU_CAPABILITY set on CPU (ATen's kernels emulating another CPU): torch 2.13's inductor then trained
to a NaN loss (avx2 on an AVX-512 host) or wrote C++ that does not compile (default), minutes into a cold compile.
`require_compile_support` refuses such a run before anything is done (ConfigError): compile was asked for and
cannot be given, and eager instead would silently be another run than the one asked for (its speed, its report).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

import torch

from ..errors import ConfigError

__all__ = ["CompileReport", "CompileWatch", "compile_model", "RECOMPILE_LIMIT", "CAPABILITY_ENV",
           "compile_unsupported", "require_compile_support"]

RECOMPILE_LIMIT = 64  # graphs per compiled frame: a study's variants each add one
CAPABILITY_ENV = "ATEN_CPU_CAPABILITY"


def compile_unsupported(device: str) -> Optional[str]:
    """Why torch.compile cannot train on `device` in this environment (module docstring), or None."""
    value = os.environ.get(CAPABILITY_ENV)
    if not value or torch.device(device).type != "cpu":
        return None
    return (f"torch.compile on CPU does not work with {CAPABILITY_ENV}={value} (ATen's kernels emulating another "
            f"CPU: torch {torch.__version__}'s inductor then trained to NaN losses under avx2 and wrote C++ that "
            f"does not compile under default)")


def require_compile_support(device: str) -> None:
    """ConfigError (one line, naming the variable and the way out) when `compile_unsupported(device)`."""
    why = compile_unsupported(device)
    if why is not None:
        raise ConfigError(f"compile: {why}; use --no-compile (compile=False) or unset {CAPABILITY_ENV}")


@dataclasses.dataclass(frozen=True)
class CompileReport:
    """What dynamo did while a run trained (counts over that run only)."""

    graphs: int  # graphs compiled (a variant's first run in a process: 1; its later runs: 0)
    graph_breaks: int
    break_reasons: Tuple[str, ...]
    recompiles: int  # graphs beyond the forward's first compile (one, plus one per graph break)

    def describe(self) -> str:
        text = (f"torch.compile: {self.graphs} graph(s) compiled, {self.graph_breaks} graph break(s), "
                f"{self.recompiles} recompile(s)")
        return text + (f" (breaks: {'; '.join(self.break_reasons)})" if self.break_reasons else "")

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _counters() -> Dict[str, Dict[str, int]]:
    from torch._dynamo.utils import counters

    return {k: dict(v) for k, v in counters.items()}


class CompileWatch:
    """Snapshot dynamo's process-wide counters now; `report()` gives what happened since."""

    def __init__(self) -> None:
        self._before = _counters()

    def report(self) -> CompileReport:
        now = _counters()

        def delta(group: str, key: str) -> int:
            return now.get(group, {}).get(key, 0) - self._before.get(group, {}).get(key, 0)

        breaks = {k: v - self._before.get("graph_break", {}).get(k, 0) for k, v in now.get("graph_break", {}).items()}
        breaks = {k: v for k, v in breaks.items() if v > 0}
        graphs, n_breaks = delta("stats", "unique_graphs"), sum(breaks.values())
        # a run's forward is one graph (+ one per break) the first time; any graph beyond that was a recompile
        return CompileReport(graphs=graphs, graph_breaks=n_breaks, break_reasons=tuple(sorted(breaks)),
                             recompiles=max(0, graphs - 1 - n_breaks))


def compile_model(module: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile(module)` with static shapes (a training batch has one shape) and a recompile limit that
    holds a study's variants."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))
    return torch.compile(module, dynamic=False)
