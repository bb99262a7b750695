"""The study's wall-time estimate, made here before the first run from short runs of its own arms (one arm: a
variant with an optimizer), and counted per arm (docs/study_speed.md).

    est = estimate_study(todo, workers)          # trains short calibration runs here, one torch thread
    log(est.describe()); [log(line) for line in est.breakdown()]

What is measured (process CPU time on CPU, wall time on a GPU, through the study's own `run_one`):
- every arm's cost: a run = its fixed part (set-up, validation) + steps x its median step. Arms cost differently
  (sigma_reparam's power iteration, qk_clip's max-logit pass, Muon's Newton-Schulz), so no arm is estimated at
  another's cost. Measured as an additive model, cost(variant, optimizer) = a[variant] + b[optimizer]: each
  variant is probed with one optimizer and each optimizer with one variant (a spanning forest of the arms: V + O - 1
  runs of `CALIBRATION_STEPS` steps for a full grid, not V x O), the other arms solved from those; a probed arm's
  cost is its own measurement. The optimizer's share of a step does not depend on the variant (same matrix
  shapes), which is what makes the model additive.
- with `compile`: each variant is compiled here first (cold unless the cache holds it, so the study's workers
  start warm), then after `torch._dynamo.reset()` again from the warm cache, as a worker's first run of the
  variant does: that warm compile, measured per variant (1-step runs: with the compile minus without it), is
  counted once per worker process that runs the variant (min(workers, the variant's runs); none with one
  worker, which is this process). The probes run on the
  already-compiled graph, so arms' costs hold no compile.
- a worker's start-up: the CPU this process spent importing Python, torch and qknorm, plus a first 1-step run of
  each optimizer (reading the data, torch's first-call set-up, Muon's dtype probe), and with compile the import
  of dynamo and inductor (measured here before the first compile).

Runs are spread over min(workers, usable CPUs): the wall time is start-up + ceil(runs / parallel) runs of the mean
cost + the workers' compiles / parallel. It assumes quiet cores: other jobs make the wall time longer, not the
CPU time.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .records import RunRecord, RunSpec
from .run import run_one
from .scheduler import one_torch_thread
from .speed import IMPORT_CPU_S, usable_cpus

__all__ = ["ArmCost", "CompileCost", "Estimate", "estimate_study", "probe_arms", "CALIBRATION_STEPS"]

CALIBRATION_STEPS = 11  # steps 1..10 hold one stats pass at the default stats_every=10, as a full run does
Arm = Tuple[str, str]  # (variant, optimizer)


@dataclasses.dataclass(frozen=True)
class ArmCost:
    """What one arm's runs are expected to cost, each: fixed_s + steps x step_s (CPU s on CPU)."""

    variant: str
    optimizer: str
    runs: int
    steps: int
    step_s: float
    fixed_s: float
    probed: bool  # measured directly (else solved from the additive model's probes)

    @property
    def run_s(self) -> float:
        return self.fixed_s + self.steps * self.step_s


@dataclasses.dataclass(frozen=True)
class CompileCost:
    """A variant's torch.compile cost: the first compile here, and the warm one each worker pays once."""

    variant: str
    first_s: float  # here, before the study (cold unless the inductor cache already held the variant)
    warm_s: float  # a compile from the warm on-disk cache, as a worker's first run of the variant pays
    compiles: int  # worker processes expected to compile it: min(workers, the variant's runs); 0 with one worker


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The study's predicted cost on this machine (module docstring)."""

    wall_s: float  # predicted wall time of the runs to train, on quiet cores
    cpu_s: float  # their summed CPU time, compiles included
    runs: int
    parallel: int  # runs at once: min(workers, usable CPUs, runs)
    arms: Tuple[ArmCost, ...]
    compiles: Tuple[CompileCost, ...]  # empty without compile
    startup_s: float  # a worker's start-up: importing torch, qknorm (and inductor), first-call set-up, the data
    calibration_s: float  # what measuring cost, before the study

    @property
    def step_s(self) -> Dict[str, float]:
        """Median step per optimizer, of the first arm that has it."""
        out: Dict[str, float] = {}
        for a in self.arms:
            out.setdefault(a.optimizer, a.step_s)
        return out

    def describe(self) -> str:
        steps = ", ".join(f"{o} {1e3 * s:.0f} ms" for o, s in self.step_s.items())
        comp = sum(c.compiles * c.warm_s for c in self.compiles)
        return (f"estimate: ~{_minutes(self.wall_s)} wall for {self.runs} runs on {self.parallel} quiet "
                f"{'core' if self.parallel == 1 else 'cores'} ({self.cpu_s:.0f} CPU s"
                + (f", {comp:.0f} of them compiling" if self.compiles else "")
                + f"; a step of the first variant: {steps}; {len(self.arms)} arms, "
                f"{sum(a.probed for a in self.arms)} probed; measured here in {self.calibration_s:.1f} s)")

    def breakdown(self) -> List[str]:
        """One line per variant: its arms' runs x (fixed + steps x step) and its compiles."""
        comp = {c.variant: c for c in self.compiles}
        lines = []
        for v in dict.fromkeys(a.variant for a in self.arms):
            arms = [a for a in self.arms if a.variant == v]
            c = comp.get(v)
            total = sum(a.runs * a.run_s for a in arms) + (c.compiles * c.warm_s if c else 0.0)
            parts = [f"{a.optimizer} {a.runs} x ({a.fixed_s:.1f} s + {a.steps} x {1e3 * a.step_s:.1f} ms"
                     f"{'' if a.probed else ', solved'})" for a in arms]
            if c is not None:
                parts.append(f"compile {c.compiles} x {c.warm_s:.1f} s (first here {c.first_s:.1f} s)")
            lines.append(f"  {v}: {total:.0f} CPU s = " + "; ".join(parts))
        return lines

    def to_json(self) -> Dict[str, Any]:
        return {**dataclasses.asdict(self), "step_s": self.step_s}


def _minutes(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _shortened(spec: RunSpec, n: int) -> RunSpec:
    """`spec` cut to `n` steps (warmup within them), without the study's deadline."""
    warmup = min(spec.train.warmup, n - 1) if n > 1 else 0
    return dataclasses.replace(spec, train=spec.train.replace(steps=n, warmup_steps=warmup), deadline=None)


def probe_arms(arms: Sequence[Arm]) -> List[Arm]:
    """A spanning forest of the arms' variant-optimizer graph, in order: the arms to measure so that the additive
    model a[variant] + b[optimizer] determines every arm (V + O - 1 of a full V x O grid)."""
    parent: Dict[Tuple[str, str], Tuple[str, str]] = {}

    def root(node: Tuple[str, str]) -> Tuple[str, str]:
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    chosen = []
    for v, o in arms:
        rv, ro = root(("v", v)), root(("o", o))
        if rv != ro:
            parent[rv] = ro
            chosen.append((v, o))
    return chosen


def _solve(measured: Dict[Arm, float], arms: Sequence[Arm]) -> Dict[Arm, float]:
    """Every arm's value from the probed ones under value = a[variant] + b[optimizer] (a forest: exact on the
    probes); arms connected to no probe are absent."""
    pot: Dict[Tuple[str, str], float] = {}
    left = dict(measured)
    while left:
        if not any(("v", v) in pot or ("o", o) in pot for v, o in left):
            v, o = next(iter(left))
            pot[("v", v)] = 0.0  # a new tree: fix its gauge
        for (v, o), x in list(left.items()):
            if ("v", v) in pot:
                pot[("o", o)] = x - pot[("v", v)]
            elif ("o", o) in pot:
                pot[("v", v)] = x - pot[("o", o)]
            else:
                continue
            del left[(v, o)]
    return {(v, o): pot[("v", v)] + pot[("o", o)] for v, o in arms if ("v", v) in pot and ("o", o) in pot}


def _cost(rec: RunRecord, spec: RunSpec) -> Tuple[Optional[float], Optional[float]]:
    """(median step, whole run) of a calibration record: CPU s on CPU, wall s on a GPU; None if unmeasured."""
    cpu = spec.train.device == "cpu"
    ms = rec.step_cpu_ms if cpu else rec.step_ms
    spent = rec.cpu_s if cpu else rec.time_s
    return (ms / 1e3 if rec.status.measured and ms else None), spent


def _inductor_import_s() -> float:
    """The CPU this process spends importing dynamo and inductor (a worker's one-off before its first compile,
    ~1.5 s here); 0 when they are already imported."""
    t0 = time.process_time()
    import torch._dynamo  # noqa: F401
    import torch._inductor.codecache  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401

    return time.process_time() - t0


def _compile_cost(spec: RunSpec, workers: int, runs: int) -> Optional[CompileCost]:
    """Compile `spec`'s variant here (first: cold unless cached), reset dynamo and compile it again from the warm
    cache, then run once on the compiled graph: 1-step runs, a compile's cost = its run's minus the last one's.
    Worker processes (workers > 1) each compile a variant they run once; one worker is this process, which has
    the graph by then."""
    one = _shortened(spec, 1)
    first = run_one(one)
    torch._dynamo.reset()  # forget the compiled graph, as a new worker process has not got it
    warm = run_one(one)
    plain = run_one(one)
    spent = [_cost(r, spec)[1] for r in (first, warm, plain)]
    if None in spent or not warm.status.measured:
        return None
    return CompileCost(variant=spec.variant, first_s=round(max(0.0, spent[0] - spent[2]), 2),
                       warm_s=round(max(0.0, spent[1] - spent[2]), 2),
                       compiles=min(workers, runs) if workers > 1 else 0)


def estimate_study(specs: Sequence[RunSpec], workers: int) -> Optional[Estimate]:
    """The wall time `specs` will take on `workers` workers here (module docstring); None when there is nothing
    to train or a calibration run does not finish (its error is the study's to report, not the estimate's)."""
    if not specs:
        return None
    t0 = time.process_time()
    by_arm: Dict[Arm, List[RunSpec]] = {}
    for s in specs:
        by_arm.setdefault((s.variant, s.optimizer), []).append(s)
    parallel = max(1, min(workers, usable_cpus(), len(specs)))
    compile_on = specs[0].train.compile
    threads = one_torch_thread()
    try:
        # a worker's first run of each optimizer pays once what later runs do not (reading the data, torch's
        # first-call set-up, Muon's dtype probe): 1-step runs pay it here, so the probes measure what every run costs
        for opt in dict.fromkeys(o for _, o in by_arm):
            first = next(s for (v, o), ss in by_arm.items() if o == opt for s in ss)
            run_one(_shortened(dataclasses.replace(first, train=first.train.replace(compile=False)), 1))
        startup = 0.0 if workers == 1 else IMPORT_CPU_S + time.process_time() - t0
        if compile_on and workers > 1:  # a worker also imports inductor before its first compile
            startup += _inductor_import_s()
        compiles: List[CompileCost] = []
        steps: Dict[Arm, float] = {}
        fixed: Dict[Arm, float] = {}
        probes = probe_arms(list(by_arm))
        # a variant's probes right after its compile: the next variant's dynamo reset drops its graph
        for v, o in sorted(probes, key=lambda arm: [p[0] for p in probes].index(arm[0])):
            spec = by_arm[(v, o)][0]
            if compile_on and all(c.variant != v for c in compiles):
                runs_v = sum(len(ss) for (vv, _), ss in by_arm.items() if vv == v)
                c = _compile_cost(spec, workers, runs_v)
                if c is None:
                    return None
                compiles.append(c)
            n = min(spec.train.steps, CALIBRATION_STEPS)
            step, spent = _cost(run_one(_shortened(spec, n)), spec)
            if step is None or spent is None:
                return None
            steps[(v, o)], fixed[(v, o)] = step, max(0.0, spent - n * step)
    finally:
        torch.set_num_threads(threads)
    step_all, fixed_all = _solve(steps, list(by_arm)), _solve(fixed, list(by_arm))
    arms = tuple(ArmCost(variant=v, optimizer=o, runs=len(ss), steps=ss[0].train.steps,
                         step_s=round(max(step_all[(v, o)], 0.0), 5), fixed_s=round(max(fixed_all[(v, o)], 0.0), 3),
                         probed=(v, o) in steps) for (v, o), ss in by_arm.items())
    costs = [a.run_s for a in arms for _ in range(a.runs)]
    compile_cpu = sum(c.compiles * c.warm_s for c in compiles)
    # runs go to the next free worker: about ceil(runs / parallel) runs of the mean cost each, after start-up;
    # a worker compiles each variant it runs once
    wall = startup + math.ceil(len(costs) / parallel) * sum(costs) / len(costs) + compile_cpu / parallel
    return Estimate(wall_s=round(wall, 1), cpu_s=round(sum(costs) + compile_cpu, 1), runs=len(costs),
                    parallel=parallel, arms=arms, compiles=tuple(compiles), startup_s=round(startup, 2),
                    calibration_s=round(time.process_time() - t0, 2))
