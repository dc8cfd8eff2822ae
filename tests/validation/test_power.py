"""What a window could detect, checked against published power tables (not against this module's own
arithmetic): Cohen (1988) for the two-sample t-test and for proportions, and the exact Mann–Whitney
null distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, norm

from toolkit.validation.power import (
    BinomialModel,
    PowerTarget,
    ShiftModel,
    batches_needed,
    fewest_samples,
    smallest_change,
    smallest_p_value,
)

TARGET = PowerTarget(alpha=0.05, power=0.8)
# Asymptotic relative efficiency of Mann–Whitney against the t-test on normal data (3/π).
ARE = 3 / math.pi


def normal_sample(n: int, sigma: float) -> np.ndarray:
    """``n`` log-normal latencies whose logs are the normal quantiles (no sampling luck in the test)."""
    return 1000 * np.exp(sigma * norm.ppf((np.arange(n) + 0.5) / n))


@pytest.mark.parametrize(("n1", "n2", "p"), [(3, 3, 0.1), (4, 4, 2 / 70), (5, 5, 2 / 252), (3, 5, 2 / 56)])
def test_smallest_p_value_is_the_exact_tests_complete_separation(n1: int, n2: int, p: float) -> None:
    separated = mannwhitneyu(np.arange(n1), np.arange(n2) + 100, alternative="two-sided", method="exact")
    assert smallest_p_value(n1, n2) == pytest.approx(p) == pytest.approx(separated.pvalue)


def test_smallest_p_value_of_large_windows_is_tiny_not_an_overflow() -> None:
    # C(4000, 2000) has 1,203 digits: found by the judge asking how many batches a strict config needs.
    assert smallest_p_value(2000, 2000) == 0.0
    assert smallest_p_value(30, 30) == pytest.approx(2 / 118264581564861424, rel=1e-9)


def test_fewest_samples_per_alpha() -> None:
    assert fewest_samples(0.05) == 4  # 0.1 at 3 against 3, 0.029 at 4
    assert fewest_samples(0.01) == 5  # 0.029 at 4, 0.0079 at 5


def test_too_few_batches_detect_nothing() -> None:
    model = ShiftModel(normal_sample(3, 0.3), normal_sample(3, 0.3), worse="higher", log=True)
    assert smallest_change(model, 3, 3, TARGET) == math.inf


def test_latency_shift_detectable_at_20_per_path_matches_cohen() -> None:
    """Cohen, table 2.4.1: 20 per group detect d = 0.90 with the t-test (alpha 0.05 two-sided, power
    0.8); Mann–Whitney needs about 1/ARE as many, so d ≈ 0.90 / sqrt(0.955) ≈ 0.92 on the log scale."""
    sigma = 0.3
    model = ShiftModel(normal_sample(20, sigma), normal_sample(20, sigma), worse="higher", log=True)
    d = smallest_change(model, 20, 20, TARGET) / sigma
    assert 0.85 < d < 1.05, d


def test_batches_needed_for_a_25_percent_slowdown_matches_cohen() -> None:
    """A 25 % slowdown at sigma 0.3 on the log scale is d = ln(1.25) / 0.3 = 0.744: Cohen's table
    gives 29 per group for the t-test at d = 0.75 (28.4 interpolated at 0.744), so about 30 for
    Mann–Whitney."""
    sigma = 0.3
    model = ShiftModel(normal_sample(30, sigma), normal_sample(30, sigma), worse="higher", log=True)
    needed = batches_needed(model, math.log(1.25), TARGET)
    assert needed is not None and 26 <= needed <= 36, needed


def test_a_slowdown_and_a_throughput_drop_are_detected_alike() -> None:
    values = normal_sample(20, 0.3)
    up = smallest_change(ShiftModel(values, values, worse="higher", log=True), 20, 20, TARGET)
    down = smallest_change(ShiftModel(values, values, worse="lower", log=True), 20, 20, TARGET)
    assert up == pytest.approx(down, rel=0.1)  # the same test both ways; 400 windows each: ±2 % power


def test_a_shift_inside_a_gap_of_the_few_values_seen_is_still_seen_with_more_batches() -> None:
    """Four baseline values in two clusters and a constant canary: a 25 % drop puts the canary between
    the clusters, where plain resampling never changes a rank (the need came out 'more than 2,000' on a
    real window of 4 + 4 batches in make test). The smoothed resampling fills the gaps."""
    canary = np.full(4, 10.0)
    baseline = 10 * np.exp(np.array([-0.5, -0.5, 0.5, 0.5]))
    needed = batches_needed(ShiftModel(canary, baseline, worse="lower", log=True), -math.log(0.75), TARGET)
    assert needed is not None and needed < 200, needed


def test_constant_values_make_any_change_detectable_once_the_test_can_reject() -> None:
    flat = np.full(6, 2400.0)
    model = ShiftModel(flat, flat, worse="higher", log=True)
    assert smallest_change(model, 6, 6, TARGET) < 1e-3
    assert batches_needed(model, math.log(1.1), TARGET) == 4


def test_success_drop_on_single_memory_batches_matches_cohens_proportions() -> None:
    """One memory per batch makes each batch a Bernoulli trial. Cohen, table 6.4.1: 392 per group
    detect h = 0.20 (alpha 0.05 two-sided, power 0.8); at p = 0.5, h = 0.2 is a drop to 0.401."""
    model = BinomialModel(0.5, np.ones(10, dtype=int), metric="success")
    drop = smallest_change(model, 392, 392, TARGET)
    assert drop == pytest.approx(0.5 - math.sin(math.asin(math.sqrt(0.5)) - 0.1) ** 2, abs=0.008)


def test_success_and_error_rate_mirror_each_other() -> None:
    sizes = np.full(10, 20)
    success = BinomialModel(1.0, sizes, metric="success")
    failure = BinomialModel(1.0, sizes, metric="failure")
    assert success.key() == failure.key()
    assert smallest_change(success, 10, 10, TARGET) == smallest_change(failure, 10, 10, TARGET)


def test_bigger_batches_need_fewer_of_them_for_a_two_point_drop() -> None:
    small = batches_needed(BinomialModel(1.0, np.full(5, 20), metric="success"), 0.02, TARGET)
    large = batches_needed(BinomialModel(1.0, np.full(5, 100), metric="success"), 0.02, TARGET)
    assert small is not None and large is not None and large < small


def test_a_need_beyond_the_cap_is_none() -> None:
    model = BinomialModel(1.0, np.ones(5, dtype=int), metric="success")
    assert batches_needed(model, 0.001, PowerTarget(max_batches=200)) is None
