"""Paired CPU timing of two models that compute the same function: the shape flags both CPU step benchmarks
(ours vs transformers, ours vs OLMo-core) take, and the alternating-rounds measurement they report.

After `warmup` rounds, each of `rounds` rounds times one step of each model, in alternating order (ours first on
even rounds) after a gc pass, so load from other processes and slow drift fall on both alike. The measurement is
the median over rounds of the paired ratio ours / theirs (< 1: ours is faster) with its 25-75% spread; on a
shared machine the ratio, not the absolute ms, is what means something.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import time
from typing import Callable, Sequence


def add_shape_args(p: argparse.ArgumentParser, families: Sequence[str]) -> None:
    """The model shape, batch and timing flags; `resolve_shape` fills the derived defaults after parsing."""
    p.add_argument("--families", nargs="+", choices=families, default=list(families))
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=None, help="default d_model / heads (Qwen3, Gemma 3 only)")
    p.add_argument("--d-ff", type=int, default=None, help="default 3 * d_model")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (one step of each model per round)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)


def resolve_shape(a: argparse.Namespace) -> argparse.Namespace:
    """head_dim = d_model / heads and d_ff = 3 * d_model where not given."""
    a.head_dim = a.head_dim or a.d_model // a.heads
    a.d_ff = a.d_ff or 3 * a.d_model
    return a


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairedTiming:
    """Median ms per step of each model and the paired ratio ours / theirs: median and 25-75% over rounds."""

    ours_ms: float
    theirs_ms: float
    ratio: float
    q25: float
    q75: float


def time_pair(ours: Callable[[], object], theirs: Callable[[], object], *, rounds: int, warmup: int) -> PairedTiming:
    """Time one step of each (`ours()`, `theirs()`) per round in alternating order, after `warmup` rounds."""
    times = {"ours": [], "theirs": []}
    for i in range(warmup + rounds):
        gc.collect()
        order = (("ours", ours), ("theirs", theirs)) if i % 2 == 0 else (("theirs", theirs), ("ours", ours))
        for name, step in order:
            t0 = time.perf_counter()
            step()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
    ratios = sorted(o / t for o, t in zip(times["ours"], times["theirs"]))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return PairedTiming(ours_ms=1e3 * statistics.median(times["ours"]),
                        theirs_ms=1e3 * statistics.median(times["theirs"]), ratio=statistics.median(ratios),
                        q25=q[0], q75=q[2])
