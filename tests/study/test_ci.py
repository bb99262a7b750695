"""95% intervals (study/ci.py): t quantiles against a published table, intervals worked by hand, separation."""
import math

import pytest

from qknorm.study.ci import Separation, mean_ci95, ratio_ci95, separation, t_quantile

# t(0.975, df) from the standard table (e.g. NIST/SEMATECH e-Handbook of Statistical Methods, 1.3.6.7.2)
TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 7: 2.365, 9: 2.262, 10: 2.228, 20: 2.086, 30: 2.042,
         60: 2.000, 100: 1.984}


@pytest.mark.parametrize("df, want", sorted(TABLE.items()))
def test_t_quantile_matches_the_published_table(df, want):
    assert t_quantile(0.975, df) == pytest.approx(want, abs=5e-4)


def test_t_quantile_other_levels_and_bad_input():
    assert t_quantile(0.95, 1) == pytest.approx(6.314, abs=5e-4)  # one-sided 95%, df 1
    assert t_quantile(0.995, 5) == pytest.approx(4.032, abs=5e-4)
    with pytest.raises(ValueError):
        t_quantile(0.4, 3)


def test_mean_ci95_by_hand():
    # 2 seeds 1.0, 2.0: mean 1.5, sd 0.7071, se 0.5, half-width 12.706 * 0.5
    m, ci = mean_ci95([1.0, 2.0])
    assert m == 1.5 and ci == pytest.approx((1.5 - 6.3531, 1.5 + 6.3531), abs=1e-3)
    # 4 values: mean 2.5, sd sqrt(5/3), se sqrt(5/3)/2, t(3) = 3.1824
    m, ci = mean_ci95([1.0, 2.0, 3.0, 4.0])
    half = 3.18245 * math.sqrt(5 / 3) / 2
    assert m == 2.5 and ci == pytest.approx((2.5 - half, 2.5 + half), abs=1e-4)
    assert mean_ci95([3.0]) == (3.0, None)  # one seed: no interval
    assert mean_ci95([None, math.nan, 2.0, None]) == (2.0, None)  # non-finite values are not data
    assert mean_ci95([]) == (None, None)


def test_ratio_ci95_is_welch_on_the_logs():
    a, b = [1.1, 1.2, 1.15], [1.0, 1.02, 0.98]
    la, lb = [math.log(x) for x in a], [math.log(x) for x in b]
    ma, mb = sum(la) / 3, sum(lb) / 3
    va = sum((x - ma) ** 2 for x in la) / 2 / 3
    vb = sum((x - mb) ** 2 for x in lb) / 2 / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    half = t_quantile(0.975, math.floor(df)) * math.sqrt(va + vb)
    r, ci = ratio_ci95(a, b)
    assert r == pytest.approx(math.exp(ma - mb))
    assert ci == pytest.approx((math.exp(ma - mb - half), math.exp(ma - mb + half)))
    assert ci[0] > 1  # these samples do separate
    assert ratio_ci95([2.0], [1.0]) == (2.0, None)


def test_separation_needs_both_intervals_and_no_overlap():
    assert separation((1.0, 2.0), (2.5, 3.0)) is Separation.BELOW
    assert separation((2.5, 3.0), (1.0, 2.0)) is Separation.ABOVE
    assert separation((1.0, 2.6), (2.5, 3.0)) is Separation.OVERLAP
    assert separation((1.0, 2.5), (2.5, 3.0)) is Separation.OVERLAP  # touching is not apart
    assert separation(None, (2.5, 3.0)) is Separation.UNKNOWN
