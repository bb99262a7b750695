"""Training-stability metrics: pure functions on numbers (no torch).

* `lr_sensitivity` — Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
  instabilities" (arXiv 2309.14322), section 3.2.
* `spike_score` / `spike_stats` — OLMo 2, "2 OLMo 2 Furious" (arXiv 2501.00656): the percentage of values
  at least 7 standard deviations away from a rolling mean of the previous 1000 values.
* `judge_divergence` — the one divergence rule (training loop, `qknorm train`'s exit status, the study's run
  status, retrofit healing): a `DivergenceVerdict` with the numbers it compared.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

import numpy as np

__all__ = ["DivergenceVerdict", "LossOutcome", "SpikeStats", "judge_divergence", "lr_sensitivity", "spike_score",
           "spike_stats", "DIVERGENCE_K", "DIVERGENCE_FLOOR", "DIVERGENCE_MIN_WINDOW"]


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

    Non-finite values are dropped before scoring (divergence is `judge_divergence`'s job); indices refer to the
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




# ---------------------------------------------------------------------------------------------- divergence

DIVERGENCE_K = 4.0  # the rise must exceed K times the per-step noise ...
DIVERGENCE_FLOOR = 0.1  # ... and at least this many nats
DIVERGENCE_MIN_WINDOW = 5  # steps a window holds at least; a run shorter than two windows is judged on finiteness


class LossOutcome(str, enum.Enum):
    """What `judge_divergence` found; the last three are divergences."""

    IMPROVED = "improved"  # the last window's mean is below the first's by more than the margin
    NO_IMPROVEMENT = "no_improvement"  # within the margin either way: a wobble around where it started
    TOO_SHORT = "too_short"  # fewer steps than two windows, every loss finite: judged on finiteness only
    NON_FINITE = "non_finite"  # a loss or gradient norm is None/NaN/±Inf
    ABOVE_UNIFORM = "above_uniform"  # the last window's mean is above max(ln V, first loss) + its margin
    ROSE = "rose"  # the last window's mean is above the first's by more than the margin

    @property
    def diverged(self) -> bool:
        return self in (LossOutcome.NON_FINITE, LossOutcome.ABOVE_UNIFORM, LossOutcome.ROSE)


@dataclass(frozen=True)
class DivergenceVerdict:
    """`judge_divergence`'s decision and every number it compared (None where a number was not computed: a run
    judged on finiteness has no windows; one without a vocabulary size no ceiling)."""

    diverged: bool
    reason: LossOutcome
    n_steps: int  # losses judged
    judged_on: str  # "windows", or "finiteness" (a non-finite value, or a run shorter than two windows)
    window: int  # steps in each of the first and last windows
    k: float = DIVERGENCE_K
    floor: float = DIVERGENCE_FLOOR
    first_loss: Optional[float] = None  # the loss at the first step (before any update)
    first_mean: Optional[float] = None  # mean loss of the first window
    last_mean: Optional[float] = None  # mean loss of the last window
    noise: Optional[float] = None  # per-step noise pooled over both windows (successive differences)
    margin: Optional[float] = None  # max(k * noise, floor): what a rise (or a fall) must exceed
    last_noise: Optional[float] = None  # per-step noise of the last window alone
    ceiling: Optional[float] = None  # max(ln_vocab, first_loss) + max(k * last_noise / sqrt(window), floor)
    vocab_size: Optional[int] = None
    ln_vocab: Optional[float] = None  # the uniform-prediction loss ln(vocab_size)
    nonfinite_step: Optional[int] = None  # position of the first non-finite value (the step, for a loop history)
    nonfinite_what: Optional[str] = None  # "loss" or "gradient norm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", LossOutcome(self.reason))

    def describe(self) -> str:
        """One line with the numbers: why the run is (not) diverged."""
        r, w = self.reason, self.window
        if r is LossOutcome.NON_FINITE:
            return f"non-finite {self.nonfinite_what} at step {self.nonfinite_step}"
        if r is LossOutcome.TOO_SHORT:
            return (f"{self.n_steps} steps, fewer than two windows of {w}: judged on finiteness only (every loss "
                    "finite)")
        last = f"the mean loss of the last {w} steps, {self.last_mean:.3f},"
        if r is LossOutcome.ABOVE_UNIFORM:
            start = (f" and the first loss {self.first_loss:.3f}" if self.first_loss > self.ln_vocab else "")
            return (f"{last} is above the uniform-prediction loss ln({self.vocab_size}) = {self.ln_vocab:.3f}{start} "
                    f"by more than the margin {self.ceiling - max(self.ln_vocab, self.first_loss):.3f} (ceiling "
                    f"{self.ceiling:.3f})")
        rule = f"the margin {self.margin:.3f} = max({self.k:g} x noise {self.noise:.3f}, floor {self.floor:g})"
        if r is LossOutcome.ROSE:
            return (f"{last} is {self.last_mean - self.first_mean:.3f} above the first {w} steps' "
                    f"{self.first_mean:.3f}: more than {rule}")
        if r is LossOutcome.IMPROVED:
            return f"the loss fell from {self.first_mean:.3f} (mean of the first {w} steps) to {self.last_mean:.3f}"
        return (f"no improvement: {last} is within {rule} of the first {w} steps' {self.first_mean:.3f} (a wobble, "
                "not a divergence)")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["reason"] = self.reason.value
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "DivergenceVerdict":
        known = {f.name for f in fields(cls)}
        return cls(**{k: (LossOutcome(v) if k == "reason" else v) for k, v in d.items() if k in known})


def _step_noise(*windows: np.ndarray) -> float:
    """Per-step noise pooled over `windows`: sqrt(mean over windows of var(successive differences) / 2).

    For independent noise of std s, x[i+1] - x[i] has variance 2 s^2 (von Neumann's successive-difference
    estimator); the differences are centred per window, so a steady trend inside a window (the first steps'
    descent, a climbing loss) is not counted as noise."""
    return math.sqrt(sum(float(np.diff(w).var(ddof=1)) for w in windows) / (2 * len(windows)))


def judge_divergence(losses: Iterable[float | None], *, vocab_size: Optional[int] = None,
                     grad_norms: Optional[Iterable[float | None]] = None) -> DivergenceVerdict:
    """Whether a run diverged, from its per-step losses (first step first); the verdict carries the numbers.

    * **Non-finite**: any loss (or gradient norm, when given) None/NaN/±Inf -> diverged.
    * **Too short**: with n losses, the window is w = max(5, n // 20) steps (the last 5% of a run, as its final
      loss). A run of fewer than 2w steps (under 10) is judged on finiteness only: not diverged, and says so.
    * **Above uniform** (with `vocab_size` V): the last window's mean is above max(ln V, first loss) by more than
      max(4 * s_last / sqrt(w), 0.1 nat), s_last the last window's per-step noise (4 standard errors of that
      mean). ln V is the loss of predicting every token uniformly: a model above it (and above where it
      started) has lost more than everything it knew. A run from a random init starts near ln V (above it when
      its init logits are large: ~0.8 nat at d_model 4096 with init std 0.02), hence the max with its own first
      loss: it is never judged against a ceiling it started above. The margin is a standard error, not a
      per-step spread, because a run in this state is chaotic: a loss jumping between 19 and 32 nats has a
      per-step noise of 5 nats, and only its mean's error (2.3 nats) keeps the verdict from calling 26 nats on
      a 256-token vocabulary a wobble. (At a random init the first loss is averaged over a batch of
      near-uniform predictions, so its own noise is negligible beside that margin.)
    * **Rose**: the last window's mean exceeds the first window's by more than the margin max(4 * s, 0.1 nat),
      s the per-step noise pooled over both windows (`_step_noise`): a rise that stands out of single steps'
      noise, for calm runs (a fine-tune, a continued run) whatever their length.
    * Else **improved** (fell by more than the margin) or **no improvement** (a wobble): not diverged.

    The numbers: k = 4 per-step standard deviations, where the difference of two 5-step means has a standard
    deviation of 0.63 s; for stationary noise a false "rose" is then rarer than 3e-4 a run at w = 5 (Gaussian
    or Student-t3 noise, 400k simulated runs) and than 1e-5 from w = 10 (runs of 200+ steps). The 0.1-nat
    floor (a 10% rise in perplexity) covers near-deterministic runs whose noise is ~0; real divergences rise by
    nats (a trained tiny llama at LR 1 went from 2.6 to 7-45 nats: tests/cli/test_divergence_rule.py).
    Known blind spot: a run that explodes inside its first window and then settles below ln V (possible with a
    large vocabulary) is not caught by "rose" (the first window's mean and noise hold the explosion).
    """
    seq = [None if v is None else float(v) for v in losses]
    n = len(seq)
    w = max(DIVERGENCE_MIN_WINDOW, n // 20)
    lnv = math.log(vocab_size) if vocab_size else None
    base = dict(n_steps=n, window=w, vocab_size=vocab_size, ln_vocab=lnv)
    grads = [None if g is None else float(g) for g in grad_norms] if grad_norms is not None else []
    for what, values in (("loss", seq), ("gradient norm", grads)):
        bad = next((i for i, v in enumerate(values) if not _is_finite(v)), None)
        if bad is not None:
            return DivergenceVerdict(True, LossOutcome.NON_FINITE, judged_on="finiteness", nonfinite_step=bad,
                                     nonfinite_what=what, **base)
    if n < 2 * w:
        return DivergenceVerdict(False, LossOutcome.TOO_SHORT, judged_on="finiteness",
                                 first_loss=seq[0] if seq else None, **base)
    x = np.asarray(seq, dtype=np.float64)
    first, last = x[:w], x[-w:]
    first_mean, last_mean = float(first.mean()), float(last.mean())
    noise, last_noise = _step_noise(first, last), _step_noise(last)
    margin = max(DIVERGENCE_K * noise, DIVERGENCE_FLOOR)
    ceiling = max(lnv, seq[0]) + max(DIVERGENCE_K * last_noise / math.sqrt(w), DIVERGENCE_FLOOR) \
        if lnv is not None else None
    if ceiling is not None and last_mean > ceiling:
        reason = LossOutcome.ABOVE_UNIFORM
    elif last_mean - first_mean > margin:
        reason = LossOutcome.ROSE
    else:
        reason = LossOutcome.IMPROVED if first_mean - last_mean > margin else LossOutcome.NO_IMPROVEMENT
    return DivergenceVerdict(reason.diverged, reason, judged_on="windows", first_loss=seq[0], first_mean=first_mean,
                             last_mean=last_mean, noise=noise, margin=margin, last_noise=last_noise, ceiling=ceiling,
                             **base)
