"""What a benchmark result depends on, recorded beside its numbers: device, date, versions, command line.

A timing without these is not a result: the same code runs 1.5x apart across cards, driver versions, torch
releases and Triton releases. Every benchmark under `qknorm bench` writes `Environment.as_dict()` into its
JSON and `Environment.heading()` into its markdown.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

# (key in the record, distribution name): what the numbers can depend on
_PACKAGES: Tuple[Tuple[str, str], ...] = (("triton", "triton"), ("transformers", "transformers"),
                                          ("liger_kernel", "liger_kernel"), ("qknorm", "qknorm"))


def _version(dist: str) -> Optional[str]:
    if dist == "qknorm":
        import qknorm

        return qknorm.__version__
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """Cores this process may run on (taskset/cgroup affinity), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu: {cpu_name()}, {cpu_cores()} cores"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Environment:
    """The record of one benchmark run (see the module docstring)."""

    device: str  # GPU name, or "cpu: <model>, <n> cores"
    date: str  # YYYY-MM-DD (UTC)
    time_utc: str  # ISO 8601, seconds
    versions: Dict[str, Optional[str]]  # python, torch, cuda, triton, transformers, liger_kernel, qknorm
    argv: Tuple[str, ...]  # the process's command line as typed
    options: Dict[str, object]  # the parsed options of the benchmark (authoritative where argv is not the CLI)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["argv"] = list(self.argv)
        return d

    def heading(self) -> str:
        """One line: device, date, versions (those installed)."""
        vs = ", ".join(f"{k} {v}" for k, v in self.versions.items() if v)
        return f"{self.device}; {self.time_utc}; {vs}"

    def command(self) -> str:
        return " ".join(self.argv)


def collect(device: str, options: Dict[str, object]) -> Environment:
    """The environment of this process for a run on `device` ("cuda" or "cpu") with the parsed `options`."""
    now = datetime.datetime.now(datetime.timezone.utc)
    versions: Dict[str, Optional[str]] = {"python": platform.python_version(), "torch": torch.__version__,
                                          "cuda": torch.version.cuda}
    versions.update({key: _version(dist) for key, dist in _PACKAGES})
    if device == "cuda":
        versions["gpu_driver"] = _driver_version()
    return Environment(device=device_name(device), date=now.date().isoformat(),
                       time_utc=now.isoformat(timespec="seconds"), versions=versions, argv=_argv(),
                       options={k: v for k, v in options.items() if not k.startswith("_")})


def _argv() -> Tuple[str, ...]:
    """sys.argv, with `python -m qknorm` and the `qknorm` script both shown as `qknorm`."""
    argv = list(sys.argv) or [""]
    p = Path(argv[0])
    if p.name == "qknorm" or (p.name == "__main__.py" and p.parent.name == "qknorm"):
        argv[0] = "qknorm"
    return tuple(argv)


def _driver_version() -> Optional[str]:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for word in text.split():
        if word.count(".") >= 1 and word.replace(".", "").isdigit():
            return word
    return None
