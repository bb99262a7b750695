"""Stability metrics on hand-made series with answers computed by hand."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qknorm.metrics import is_diverged, lr_sensitivity, spike_score, spike_stats

# ---------------------------------------------------------------------------------------------- LR sensitivity


def test_lr_sensitivity_hand_computed_with_a_diverged_run():
    # l0 = 5.0; clipped losses [2.0, 1.5, 1.8, 5.0 (diverged)]; l* = 1.5
    # terms [0.5, 0.0, 0.3, 3.5] -> mean 4.3 / 4 = 1.075
    grid = {1e-3: 2.0, 3e-3: 1.5, 1e-2: 1.8, 3e-2: None}
    assert lr_sensitivity(grid, init_loss=5.0) == pytest.approx(1.075)


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -float("inf"), 7.5, 4.0])
def test_lr_sensitivity_counts_diverged_and_worse_than_init_as_init(bad):
    # every form of "no progress" equals l0 = 4.0: clipped [3.0, 3.5, 4.0], l* = 3.0, terms [0, 0.5, 1.0]
    grid = {1e-3: 3.0, 1e-2: 3.5, 1e-1: bad}
    assert lr_sensitivity(grid, init_loss=4.0) == pytest.approx(0.5)


def test_lr_sensitivity_flat_grid_is_zero_and_order_free():
    assert lr_sensitivity({1e-3: 2.0, 1e-2: 2.0, 1e-1: 2.0}, init_loss=5.5) == 0.0
    a = lr_sensitivity({1e-3: 2.0, 1e-2: 3.0, 1e-1: 2.5}, init_loss=5.5)
    b = lr_sensitivity({1e-1: 2.5, 1e-3: 2.0, 1e-2: 3.0}, init_loss=5.5)
    assert a == b == pytest.approx(0.5)


def test_lr_sensitivity_pilot_numbers_reproduce():
    # the CPU pilot in reference/stability_literature.md, seed 0 (val losses, l0 = ln 256)
    l0 = math.log(256)
    no_qk = {1e-3: 1.798, 3e-3: 1.745, 1e-2: 1.893, 3e-2: 2.736, 1e-1: 2.857}
    qk = {1e-3: 1.797, 3e-3: 1.713, 1e-2: 1.775, 3e-2: 2.038, 1e-1: 2.111}
    assert lr_sensitivity(no_qk, l0) == pytest.approx(0.461, abs=1e-3)
    assert lr_sensitivity(qk, l0) == pytest.approx(0.174, abs=1e-3)


def test_lr_sensitivity_when_nothing_beats_init_is_zero_by_the_formula():
    # documented corner: l* is taken over the clipped losses, so an all-failed grid scores 0 (not an error)
    assert lr_sensitivity({1e-2: None, 1e-1: float("nan")}, init_loss=5.0) == 0.0
    assert lr_sensitivity({1e-2: 6.0, 1e-1: 7.0}, init_loss=5.0) == 0.0


def test_lr_sensitivity_rejects_empty_grid_and_bad_init():
    with pytest.raises(ValueError):
        lr_sensitivity({}, 1.0)
    with pytest.raises(ValueError):
        lr_sensitivity({1e-3: 1.0}, float("nan"))


# ---------------------------------------------------------------------------------------------- spike score


def test_flat_series_with_one_spike_scores_exactly_one():
    x = np.full(500, 3.25)
    x[300] = 3.3
    s = spike_stats(x, window=100, min_history=10)
    assert s.n_scored == 490  # positions 10..499
    assert s.n_spikes == 1 and s.spike_indices == (300,)
    assert s.score == pytest.approx(100 / 490)
    assert spike_score(x, window=100, min_history=10) == pytest.approx(100 / 490)


def test_perfectly_flat_series_has_no_spikes():
    # 0.1 is not exactly representable: the mean differs from it by rounding, which must not count
    s = spike_stats(np.full(3000, 0.1), window=1000)
    assert s.n_spikes == 0 and s.n_scored == 2900  # default min_history = 1000 // 10


def test_alternating_series_threshold_is_inclusive_and_uses_population_std():
    # history 0,1,0,1,...: mean 0.5, population std 0.5 -> threshold 0.5 + 7 * 0.5 = 4.0
    base = np.tile([0.0, 1.0], 100)
    at = base.copy()
    at[150] = 4.0  # exactly 7 std (ddof=1 would make this 6.98 std: not a spike)
    below = base.copy()
    below[150] = 3.99
    assert spike_stats(at, window=50).spike_indices == (150,)
    assert spike_stats(below, window=50).n_spikes == 0
    assert spike_stats(base, window=50).n_spikes == 0


def test_one_sided_counts_only_upward_spikes():
    x = np.zeros(400)
    x[200] = -1.0
    x[300] = +1.0
    assert spike_stats(x, window=50).spike_indices == (200, 300)
    assert spike_stats(x, window=50, one_sided=True).spike_indices == (300,)


def test_spikes_found_across_vectorized_chunks_with_the_paper_window():
    x = np.full(10_000, 2.0)
    for i in (1500, 5500, 9000):  # > window apart, so each has a flat history; 5500+ lies past chunk 1
        x[i] = 2.5
    s = spike_stats(x)  # window 1000, 7 std
    assert s.spike_indices == (1500, 5500, 9000)
    assert s.n_scored == 10_000 - 100


def test_non_finite_values_are_dropped_and_indices_refer_to_the_input():
    x = [1.0] * 30 + [float("nan")] + [1.0] * 10 + [2.0] + [1.0] * 5
    s = spike_stats(x, window=20, min_history=5)
    assert s.spike_indices == (41,)
    assert s.n_scored == len(x) - 1 - 5


def test_too_short_series_scores_nan():
    assert math.isnan(spike_score([1.0, 2.0, 3.0], window=1000))
    assert spike_stats([1.0, 2.0, 3.0], window=1000).n_scored == 0


def test_spike_argument_errors():
    with pytest.raises(ValueError):
        spike_score([1.0] * 10, window=1)
    with pytest.raises(ValueError):
        spike_score([1.0] * 10, window=10, n_std=0)
    with pytest.raises(ValueError):
        spike_score([1.0] * 10, window=10, min_history=11)


def _naive_spikes(x, window, n_std, min_history):
    """Reference loop; returns (clear spikes, borderline positions where rounding could decide)."""
    sure, borderline = set(), set()
    for i in range(min_history, len(x)):
        h = np.asarray(x[max(0, i - window) : i], dtype=np.float64)
        m, s = h.mean(), h.std()
        d = abs(x[i] - m)
        if abs(d - n_std * s) < 1e-9 or d < 1e-9:
            borderline.add(i)
        elif d > n_std * s:
            sure.add(i)
    return sure, borderline


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.floats(-10, 10, allow_nan=False), min_size=0, max_size=120),
    window=st.integers(2, 25),
    n_std=st.sampled_from([1.0, 2.0, 3.0]),
)
def test_spike_stats_matches_a_naive_loop(data, window, n_std):
    data = [round(v, 3) for v in data]
    min_history = max(2, window // 10)
    got = set(spike_stats(data, window=window, n_std=n_std).spike_indices)
    sure, borderline = _naive_spikes(data, window, n_std, min_history)
    assert sure <= got <= sure | borderline
    assert spike_stats(data, window=window, n_std=n_std).n_scored == max(0, len(data) - min_history)


# ---------------------------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), None])
def test_non_finite_anywhere_is_diverged(bad):
    assert is_diverged([5.0, 4.0, bad, 1.0], init_loss=5.5)


def test_final_loss_rule_is_strictly_above_init_plus_tolerance():
    assert not is_diverged([5.5, 3.0, 2.0], init_loss=5.5)
    assert is_diverged([5.5, 3.0, 5.6], init_loss=5.5)  # recovered-then-blew-up, still finite
    assert not is_diverged([5.5, 3.0, 5.5], init_loss=5.5)  # equal is not above
    assert not is_diverged([5.5, 3.0, 5.6], init_loss=5.5, tolerance=0.2)
    assert not is_diverged([5.5, 9.0, 3.0], init_loss=5.5)  # a transient excursion is a spike, not divergence
    assert not is_diverged([], init_loss=5.5)
