"""Training-stability metrics: pure functions on numbers (no torch).

* `lr_sensitivity` — Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
  instabilities" (arXiv 2309.14322), section 3.2.
* `spike_score` / `spike_stats` — OLMo 2, "2 OLMo 2 Furious" (arXiv 2501.00656): the percentage of values
  at least 7 standard deviations away from a rolling mean of the previous 1000 values.
* `is_diverged` — the study's divergence rule: a NaN/Inf anywhere, or a final loss above the initial loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["SpikeStats", "is_diverged", "lr_sensitivity", "spike_score", "spike_stats"]


def _is_finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def lr_sensitivity(final_losses: Mapping[float, float | None], init_loss: float) -> float:
    """LR sensitivity of one variant over a learning-rate grid (Wortsman et al. 2023, arXiv 2309.14322).

        sensitivity = mean over lr in grid of [ min(l(lr), l0) - l* ]

    where ``l(lr)`` is the final loss of the run at that peak LR, ``l0 = init_loss`` the loss at
    initialization, and ``l* = min over the grid of min(l(lr), l0)`` the best loss on the grid. A diverged
    run (``None``, NaN or ±Inf) counts as ``l0``; so does any loss above ``l0``. Lower is flatter (less
    sensitive). Note that a grid on which *no* run gets below ``l0`` scores 0 by this formula: report the
    best loss next to the sensitivity.
    """
    if not final_losses:
        raise ValueError("lr_sensitivity needs at least one learning rate")
    l0 = float(init_loss)
    if not math.isfinite(l0):
        raise ValueError(f"init_loss must be finite, got {init_loss}")
    clipped = [min(float(v), l0) if _is_finite(v) else l0 for v in final_losses.values()]
    best = min(clipped)
    return float(sum(c - best for c in clipped) / len(clipped))


@dataclass(frozen=True)
class SpikeStats:
    """Result of `spike_stats`: `score` is the percentage ``100 * n_spikes / n_scored`` (NaN when
    nothing was scored), `spike_indices` the positions (into the input) of the spikes."""

    score: float
    n_spikes: int
    n_scored: int
    spike_indices: tuple[int, ...]


def spike_stats(
    values: Iterable[float],
    window: int = 1000,
    n_std: float = 7.0,
    *,
    min_history: int | None = None,
    one_sided: bool = False,
) -> SpikeStats:
    """Spikes in a series (loss or gradient norm), as in OLMo 2 (arXiv 2501.00656).

    Value ``i`` is *scored* when at least `min_history` earlier values exist (default
    ``max(2, window // 10)``, i.e. 100 for the paper's window of 1000). Its history is the previous
    ``min(i, window)`` values; it is a *spike* when ``|v_i - mean| >= n_std * std`` (population std,
    ddof=0) and ``v_i`` differs from the mean by more than floating-point rounding, so a perfectly flat
    series has no spikes while any jump after a flat history is one. With ``one_sided=True`` only upward
    jumps count (``v_i - mean >= n_std * std``, as OLMo-core's stability monitor does).

    Non-finite values are dropped before scoring (divergence is `is_diverged`'s job); indices refer to the
    original positions.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if not n_std > 0:
        raise ValueError(f"n_std must be > 0, got {n_std}")
    if min_history is None:
        min_history = max(2, window // 10)
    if not 1 <= min_history <= window:
        raise ValueError(f"min_history must be in [1, window={window}], got {min_history}")

    raw = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    positions = np.flatnonzero(np.isfinite(raw))
    x = raw[positions]
    n = len(x)
    if n <= min_history:
        return SpikeStats(float("nan"), 0, 0, ())

    mean = np.empty(n)
    std = np.empty(n)
    # Expanding history for i < window (at most `window` small reductions) ...
    for i in range(min_history, min(n, window)):
        h = x[:i]
        mean[i] = h.mean()
        std[i] = h.std()
    # ... and a full sliding window after that, vectorized in chunks to bound memory.
    if n > window:
        views = np.lib.stride_tricks.sliding_window_view(x[:-1], window)  # views[j] = x[j : j + window]
        chunk = max(1, (1 << 22) // window)
        for start in range(0, n - window, chunk):
            h = views[start : start + chunk]
            mean[window + start : window + start + len(h)] = h.mean(axis=1)
            std[window + start : window + start + len(h)] = h.std(axis=1)

    idx = np.arange(min_history, n)
    dev = x[idx] - mean[idx]
    if not one_sided:
        dev = np.abs(dev)
    rounding = 16 * np.finfo(np.float64).eps * np.maximum(np.maximum(np.abs(x[idx]), np.abs(mean[idx])), 1.0)
    spikes = idx[(dev >= n_std * std[idx]) & (dev > rounding)]
    n_scored = len(idx)
    return SpikeStats(
        score=100.0 * len(spikes) / n_scored,
        n_spikes=int(len(spikes)),
        n_scored=int(n_scored),
        spike_indices=tuple(int(positions[i]) for i in spikes),
    )


def spike_score(
    values: Iterable[float],
    window: int = 1000,
    n_std: float = 7.0,
    *,
    min_history: int | None = None,
    one_sided: bool = False,
) -> float:
    """OLMo 2 spike score: the percentage (0..100) of scored values that are spikes; see `spike_stats`
    for the exact rule. NaN when the series is too short to score any value."""
    return spike_stats(values, window, n_std, min_history=min_history, one_sided=one_sided).score


def is_diverged(losses: Iterable[float | None], init_loss: float, *, tolerance: float = 0.0) -> bool:
    """Whether a run diverged: any loss is None/NaN/±Inf, or the final (last) loss is strictly above
    ``init_loss + tolerance``. `init_loss` is the loss at initialization (e.g. the first logged loss, or
    ``ln(vocab_size)``). A run with no losses at all is not diverged (nothing to judge)."""
    seq = list(losses)
    if any(not _is_finite(v) for v in seq):
        return True
    if not seq:
        return False
    return float(seq[-1]) > float(init_loss) + tolerance
