"""Paired differences over seeds and their Student-t intervals (tensam.stats)."""

import math
import random

import pytest

from tensam.stats import mean_interval, paired_difference, t_quantile


def test_t_quantiles_are_the_tables():
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-6)
    assert t_quantile(0.975, 10**6) == pytest.approx(1.959966, abs=1e-5)


def test_mean_interval_by_hand():
    ci = mean_interval([1.0, 2.0, 3.0])  # sd 1, n 3
    half = 4.302653 / math.sqrt(3)
    assert (ci.mean, ci.n) == (2.0, 3)
    assert ci.low == pytest.approx(2 - half, abs=1e-6) and ci.high == pytest.approx(2 + half)
    assert not ci.excludes_zero and ci.format(2) == "+2.00 [-0.48, +4.48]"
    one = mean_interval([0.5])
    assert math.isnan(one.low) and not one.excludes_zero and one.format() == "+0.5 (n = 1)"
    with pytest.raises(ValueError, match="diverged"):
        mean_interval([1.0, float("nan")])


def test_pairing_uses_the_common_seeds_and_removes_what_they_share():
    """Seed effects shared by both methods (here +-10) cancel in the paired difference."""
    shared = {0: 10.0, 1: -10.0, 2: 3.0, 3: 0.0}
    a = {s: v + 1.0 + 0.1 * s for s, v in shared.items()}
    b = {s: v for s, v in shared.items() if s != 3}
    d = paired_difference(a, b)
    assert d.seeds == (0, 1, 2) and d.n == 3 and d.mean == pytest.approx(1.1)
    assert d.excludes_zero and d.low > 0.8
    assert not mean_interval([a[s] for s in d.seeds]).excludes_zero  # unpaired: lost in +-10
    with pytest.raises(ValueError, match="no seed is in both"):
        paired_difference({0: 1.0}, {1: 1.0})


@pytest.mark.parametrize("n", [3, 10])
def test_the_interval_covers_the_true_difference_95_percent_of_the_time(n):
    rng = random.Random(n)
    trials = 4000
    covered = 0
    for _ in range(trials):
        shared = [rng.gauss(0, 5) for _ in range(n)]
        a = {s: shared[s] + 0.3 + rng.gauss(0, 1) for s in range(n)}
        b = {s: shared[s] + rng.gauss(0, 1) for s in range(n)}
        d = paired_difference(a, b)
        covered += d.low <= 0.3 <= d.high
    assert abs(covered / trials - 0.95) < 3 * math.sqrt(0.95 * 0.05 / trials)
