"""Statistics of `umop study`: the t quantile against printed tables, the paired difference by hand."""

from __future__ import annotations

import math

import pytest

from umop.study.stats import mean_std, paired_difference, regularized_beta, t_cdf, t_quantile


@pytest.mark.parametrize("p, dof, table", [
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182), (0.975, 4, 2.776), (0.975, 10, 2.228),
    (0.975, 30, 2.042), (0.95, 5, 2.015), (0.995, 3, 5.841), (0.9, 1, 3.078),
])
def test_t_quantile_matches_printed_tables(p, dof, table):
    assert t_quantile(p, dof) == pytest.approx(table, abs=1e-3)
    assert t_quantile(1 - p, dof) == pytest.approx(-table, abs=1e-3)  # symmetric


def test_t_cdf_closed_forms():
    # dof 1 is the Cauchy distribution: F(t) = 1/2 + atan(t)/pi; dof 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.5, 0.0, 0.7, 5.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert regularized_beta(0.3, 1.0, 1.0) == pytest.approx(0.3)  # I_x(1, 1) = x
    with pytest.raises(ValueError, match="p must be"):
        t_quantile(1.0, 3)


def test_paired_difference_hand_computed():
    variant = {0: 0.30, 1: 0.34, 2: 0.29, 7: 0.5}  # seed 7 has no baseline partner: left out
    baseline = {0: 0.28, 1: 0.31, 2: 0.30, 9: 0.1}
    result = paired_difference(variant, baseline)
    # by hand: d = 0.02, 0.03, -0.01; mean = 0.04 / 3 = 0.013333; squared deviations 4.444e-5, 2.7778e-4,
    # 5.4444e-4, sum 8.6667e-4, sd = sqrt(8.6667e-4 / 2) = 0.020817; se = sd / sqrt(3) = 0.012019;
    # half width = t(0.975, 2) * se = 4.303 * 0.012019 = 0.051717 -> [-0.038384, 0.065050]
    assert result.seeds == [0, 1, 2]
    assert result.mean == pytest.approx(0.013333, abs=1e-6)
    assert result.std == pytest.approx(0.020817, abs=1e-6)
    assert result.low == pytest.approx(-0.038384, abs=2e-5)
    assert result.high == pytest.approx(0.065050, abs=2e-5)
    assert result.excludes_zero is False
    shifted = paired_difference({s: v + 0.1 for s, v in variant.items()}, baseline)
    assert shifted.excludes_zero is True and shifted.low > 0
    single = paired_difference({0: 0.3}, {0: 0.2})
    assert single.n == 1 and math.isnan(single.low) and single.excludes_zero is None
    assert paired_difference({0: 0.3}, {1: 0.2}) is None
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(5 / 3)))
