"""What a canary window could have detected: the smallest regression the judge's own test catches.

The judge (:mod:`toolkit.validation.canary`) flags a metric when a two-sided Mann–Whitney U test between
the canary's and the baseline's per-batch values is significant at ``alpha``. With few batches that test
can hardly reject anything, so "no regression found" would often mean "nothing could have been found".
This module answers, for the window the judge has, *how large a regression would it have caught with
probability ``power`` (0.8)*, and how many batches per path it needs to catch one as small as the
metric's tolerance.

**Method: simulation, not a formula.** Each answer runs the judge's own test (``scipy``'s
``mannwhitneyu``, the same call and the same direction rule) on ``simulations`` simulated windows of the
same size, with a regression of a given size added, and counts how often it is flagged; a bisection finds
the smallest regression flagged in at least ``power`` of them. A closed form (Noether's sample size for
the Mann–Whitney test, Cohen's arcsine formula for proportions) would need a distribution for latencies,
which are skewed and multi-modal, and would ignore two things that decide small windows: the exact
test's smallest possible p-value (2 / C(n1 + n2, n1): 0.10 at 3 against 3, so nothing is ever flagged at
0.05), and ties. The simulated windows are built from what the window itself shows:

- **ratio metrics** (end-to-end time, memories/s, history bytes), :class:`ShiftModel`: the log of each
  path's values minus that path's median, resampled per path (smoothed, so a few values leave no
  gaps); a regression is a ratio, i.e. a shift on the log scale added to the canary;
- **memory rates** (success rate, error rate), :class:`BinomialModel`: each batch's failures drawn
  from a binomial over its memories at the baseline's pooled rate (batch sizes resampled from those
  seen), the canary's failure rate raised by the regression, in points. Memories are treated as
  independent trials; failures that cluster (a whole chunk lost) make the real power lower.

Common random numbers (the same draws for every regression size) keep the power curve monotone, and a
fixed seed makes every answer reproducible. Nothing here reads a server.

An estimate is only as good as the spread the window shows: four batches that happen to lie close
together make a latency shift look easier to see than it is (with representative values the answers
match the published tables, see ``tests/validation/test_power.py``). Such a window stays ``not enough
data`` anyway: the success rate alone needs a few hundred memories per path for a 2-point drop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from scipy.stats import binom, mannwhitneyu

__all__ = [
    "POWER",
    "BinomialModel",
    "PowerTarget",
    "ShiftModel",
    "WindowModel",
    "batches_needed",
    "fewest_samples",
    "smallest_change",
    "smallest_p_value",
]

POWER = 0.8
Worse = Literal["higher", "lower"]


def smallest_p_value(n1: int, n2: int) -> float:
    """The smallest two-sided p-value of the exact Mann–Whitney test, n1 against n2: complete separation,
    one arrangement of C(n1 + n2, n1) in either tail."""
    if n1 < 1 or n2 < 1:
        return 1.0
    # In logs: C(4000, 2000) is too large for a float.
    log_arrangements = math.lgamma(n1 + n2 + 1) - math.lgamma(n1 + 1) - math.lgamma(n2 + 1)
    return min(1.0, 2.0 * math.exp(-log_arrangements))


def fewest_samples(alpha: float) -> int:
    """The fewest batches per path at which the exact test can reach p < ``alpha`` at all (4 at 0.05)."""
    n = 1
    while smallest_p_value(n, n) >= alpha:
        n += 1
    return n


@dataclass(frozen=True)
class PowerTarget:
    """What "detected" means: the judge's test at ``alpha`` flags it in ``power`` of the windows."""

    alpha: float = 0.05
    power: float = POWER
    simulations: int = 400
    seed: int = 0
    # The most batches per path worth computing a need for; beyond it the answer is "more than this".
    max_batches: int = 2000


class WindowModel(Protocol):
    """Simulated windows of one metric: per-batch values of both paths, with a regression added."""

    # Which direction the judge counts as worse for this metric.
    worse: Worse

    def draw(self, rng: np.random.Generator, simulations: int, n_canary: int, n_baseline: int) -> object:
        """Random numbers for ``simulations`` windows (kept, so every regression size uses the same)."""
        ...

    def windows(self, draws: object, change: float) -> tuple[np.ndarray, np.ndarray]:
        """(canary, baseline) values, each ``simulations`` × batches, with a regression of ``change``."""
        ...

    def largest_change(self) -> float:
        """A regression so large that every simulated window separates the paths completely."""
        ...


def _flagged(canary: np.ndarray, baseline: np.ndarray, alpha: float, worse: Worse) -> np.ndarray:
    """Per simulated window: does the judge's test flag the canary as worse? (``classify``'s rule)."""
    n1, n2 = canary.shape[1], baseline.shape[1]
    # The judge's test on real values (no ties) is exact up to 8 per path, as scipy's "auto" chooses; the
    # resampled values here have ties, which would switch "auto" to the normal approximation, far too
    # ready to reject at such sizes. Choose as "auto" does for the data the judge will see.
    method = "exact" if max(n1, n2) <= 8 else "asymptotic"
    result = mannwhitneyu(canary, baseline, axis=1, alternative="two-sided", method=method)
    higher = np.asarray(result.statistic) > n1 * n2 / 2
    significant = np.nan_to_num(np.asarray(result.pvalue, dtype="float64"), nan=1.0) < alpha
    return significant & (higher if worse == "higher" else ~higher)


def _power(model: WindowModel, draws: object, change: float, alpha: float) -> float:
    canary, baseline = model.windows(draws, change)
    return float(_flagged(canary, baseline, alpha, model.worse).mean())


def smallest_change(model: WindowModel, n_canary: int, n_baseline: int, target: PowerTarget) -> float:
    """The smallest regression (in the model's unit) flagged in ``target.power`` of the simulated windows
    of ``n_canary`` against ``n_baseline`` batches; ``math.inf`` when none is (too few batches)."""
    if smallest_p_value(n_canary, n_baseline) >= target.alpha:
        return math.inf
    rng = np.random.default_rng([target.seed, n_canary, n_baseline])
    draws = model.draw(rng, target.simulations, n_canary, n_baseline)
    high = model.largest_change()
    if _power(model, draws, high, target.alpha) < target.power:
        return math.inf
    low = 0.0
    for _ in range(40):
        # 0.2 % of the answer is finer than the simulation's own noise (400 windows: ±2 % power).
        if high - low <= 2e-3 * max(high, 1e-9):
            break
        middle = (low + high) / 2
        if _power(model, draws, middle, target.alpha) >= target.power:
            high = middle
        else:
            low = middle
    return high


def batches_needed(
    model: WindowModel, change: float, target: PowerTarget, *, at_least: int = 1
) -> int | None:
    """The fewest batches per path (equal on both) at which a regression of ``change`` is flagged in
    ``target.power`` of the simulated windows; None when more than ``target.max_batches`` are needed."""

    def enough(n: int) -> bool:
        if smallest_p_value(n, n) >= target.alpha:
            return False
        rng = np.random.default_rng([target.seed, n, n, 1])
        draws = model.draw(rng, target.simulations, n, n)
        return _power(model, draws, change, target.alpha) >= target.power

    low = max(at_least, fewest_samples(target.alpha)) - 1  # the largest n known (or assumed) too few
    high = low + 1
    while not enough(high):
        low = high
        if high >= target.max_batches:
            return None
        high = min(2 * high, target.max_batches)
    while high - low > 1:
        middle = (low + high) // 2
        if enough(middle):
            high = middle
        else:
            low = middle
    return high


# ---- the two window models ---------------------------------------------------------------------------
class ShiftModel:
    """Per-batch values whose distribution is what the window shows, the canary shifted by ``change``.

    ``log=True`` (ratio metrics): values are compared on the log scale, so ``change`` is a log ratio
    (``math.log(1.25)`` = 25 % worse). Each path keeps its own shape: its values minus its own median
    (the reference path's history is nearly constant while the legacy path's grows with the batch
    size; pooling them would lend the one the other's spread). A path with no values borrows the
    other's.

    The values are resampled with a little Gaussian noise (a smoothed bootstrap: Silverman's bandwidth,
    scaled back to the path's own variance). Plain resampling of a handful of values leaves gaps: a
    shift that falls inside one never changes a rank, and the test would seem unable to see it at any
    number of batches.
    """

    def __init__(self, canary: np.ndarray, baseline: np.ndarray, *, worse: Worse, log: bool) -> None:
        def residuals(values: np.ndarray) -> np.ndarray:
            values = np.asarray(values, dtype="float64")
            values = values[np.isfinite(values)]
            if log:
                values = np.log(values[values > 0])
            return values - np.median(values) if len(values) else values

        self.worse: Worse = worse
        c, b = residuals(canary), residuals(baseline)
        fallback = c if len(c) else b if len(b) else np.zeros(1)
        self.canary = c if len(c) else fallback
        self.baseline = b if len(b) else fallback

    @staticmethod
    def _resample(rng: np.random.Generator, residuals: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        drawn = rng.choice(residuals, size=shape)
        spread = float(residuals.std(ddof=1)) if len(residuals) > 1 else 0.0
        if spread == 0:
            return drawn
        bandwidth = 1.06 * spread * len(residuals) ** -0.2
        return (drawn + bandwidth * rng.standard_normal(shape)) / math.sqrt(1 + (bandwidth / spread) ** 2)

    def draw(self, rng: np.random.Generator, simulations: int, n_canary: int, n_baseline: int) -> object:
        return (
            self._resample(rng, self.canary, (simulations, n_canary)),
            self._resample(rng, self.baseline, (simulations, n_baseline)),
        )

    def windows(self, draws: object, change: float) -> tuple[np.ndarray, np.ndarray]:
        canary, baseline = draws  # type: ignore[misc]
        return (canary + change if self.worse == "higher" else canary - change), baseline

    def largest_change(self) -> float:
        both = np.concatenate([self.canary, self.baseline])
        spread = float(both.max() - both.min())
        noise = 12 * max(float(r.std(ddof=1)) if len(r) > 1 else 0.0 for r in (self.canary, self.baseline))
        return spread + noise + max(1e-6, 1e-3 * spread)


class BinomialModel:
    """Per-batch memory rates: each batch's failures drawn over its memories (batch sizes resampled from
    ``sizes``) at the baseline's failure rate, the canary's raised by ``change`` (a fraction: 0.02 = two
    points). ``metric`` says what the judge compares: ``success`` (successful / total, worse lower) or
    ``failure`` (failed / total, worse higher)."""

    def __init__(self, baseline_rate: float, sizes: np.ndarray, *, metric: Literal["success", "failure"]):
        self.failure_rate = min(1.0, max(0.0, 1.0 - baseline_rate))
        sizes = np.asarray(sizes, dtype="int64")
        self.sizes = sizes[sizes > 0] if (sizes > 0).any() else np.ones(1, dtype="int64")
        self.metric = metric
        self.worse: Worse = "lower" if metric == "success" else "higher"

    def draw(self, rng: np.random.Generator, simulations: int, n_canary: int, n_baseline: int) -> object:
        return (
            rng.choice(self.sizes, size=(simulations, n_canary)),
            rng.random((simulations, n_canary)),
            rng.choice(self.sizes, size=(simulations, n_baseline)),
            rng.random((simulations, n_baseline)),
        )

    def _rates(self, sizes: np.ndarray, uniforms: np.ndarray, failure_rate: float) -> np.ndarray:
        # The inverse CDF of one uniform per batch: the same uniform gives more failures at a higher rate.
        failures = binom.ppf(uniforms, sizes, min(1.0, failure_rate))
        failed = failures / sizes
        return failed if self.metric == "failure" else 1.0 - failed

    def windows(self, draws: object, change: float) -> tuple[np.ndarray, np.ndarray]:
        c_sizes, c_uniform, b_sizes, b_uniform = draws  # type: ignore[misc]
        return (
            self._rates(c_sizes, c_uniform, self.failure_rate + change),
            self._rates(b_sizes, b_uniform, self.failure_rate),
        )

    def largest_change(self) -> float:
        return 1.0 - self.failure_rate

    def key(self) -> tuple[float, bytes]:
        """Equal for the success and the failure view of the same memories (they mirror each other)."""
        return self.failure_rate, np.sort(self.sizes).tobytes()
