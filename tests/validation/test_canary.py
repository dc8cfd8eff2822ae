"""The canary judge on known distributions: each case names the class or verdict it must produce."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from toolkit.validation.canary import (
    CanaryConfig,
    InvalidCanaryConfig,
    MetricSpec,
    classify,
    judge,
    metric_samples,
    newcombe_interval,
    path_percentiles,
    wilson_interval,
)
from toolkit.validation.metrics import BATCH_COLUMNS

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LATENCY = MetricSpec("end_to_end_ms", "increase", "ratio", 0.25, 25)


def batches(
    storage: str,
    n: int,
    *,
    seed: int,
    e2e_median: float = 2000.0,
    history: float = 5000.0,
    total: int = 20,
    failed: int = 0,
    status: str = "completed",
    error_types: list[str] | None = None,
    run_status: str = "COMPLETED",
) -> pd.DataFrame:
    """``n`` batch rows shaped like collect_batches, latencies log-normal around ``e2e_median``."""
    rng = np.random.default_rng(seed)
    e2e = e2e_median * rng.lognormal(0.0, 0.3, n)
    created = [NOW - timedelta(minutes=30) + timedelta(seconds=i) for i in range(n)]
    finished = status in ("completed", "partial", "failed")
    return pd.DataFrame(
        {
            "batch_id": [f"{storage}-{seed}-{i}" for i in range(n)],
            "storage": storage,
            "status": status,
            "total": total,
            "successful": total - failed if finished else 0,
            "failed": failed if finished else 0,
            "created_at": pd.to_datetime(created, utc=True),
            "end_to_end_ms": e2e if finished else np.nan,
            "history_bytes": history * rng.uniform(0.95, 1.05, n),
            "run_status": run_status,
            "error_types": [list(error_types or []) for _ in range(n)],
        }
    )


def window(*frames: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True)


# ---- classify: one metric ------------------------------------------------------------------------
def test_same_distribution_passes() -> None:
    rng = np.random.default_rng(1)
    cls, effect, p = classify(rng.lognormal(7, 0.3, 40), rng.lognormal(7, 0.3, 40), LATENCY)
    assert cls == "pass"
    assert p is not None and p >= 0.05


def test_twice_as_slow_is_high() -> None:
    rng = np.random.default_rng(2)
    cls, effect, p = classify(2 * rng.lognormal(7, 0.3, 30), rng.lognormal(7, 0.3, 30), LATENCY)
    assert cls == "high"
    assert effect is not None and 1.6 < effect < 2.5
    assert p is not None and p < 0.001


def test_much_faster_is_low() -> None:
    rng = np.random.default_rng(3)
    cls, _, _ = classify(0.3 * rng.lognormal(7, 0.3, 30), rng.lognormal(7, 0.3, 30), LATENCY)
    assert cls == "low"


def test_significant_but_within_tolerance_passes() -> None:
    """5% slower, certain with 2,000 samples, but inside the 25% tolerance."""
    rng = np.random.default_rng(4)
    canary, baseline = 1.05 * rng.lognormal(7, 0.1, 2000), rng.lognormal(7, 0.1, 2000)
    cls, effect, p = classify(canary, baseline, LATENCY)
    assert p is not None and p < 0.05
    assert effect is not None and 1.0 < effect < 1.25
    assert cls == "pass"


def test_large_but_not_significant_passes() -> None:
    """Medians far apart, but three overlapping samples each: no evidence, so no class."""
    cls, effect, p = classify([100, 6000, 9000], [90, 4000, 8000], LATENCY, min_samples=3)
    assert effect is not None and effect > 1.25
    assert p is not None and p >= 0.05
    assert cls == "pass"


def test_too_few_samples_is_nodata() -> None:
    cls, effect, p = classify([1, 2, 3, 4], [10, 20, 30, 40, 50], LATENCY, min_samples=5)
    assert (cls, effect, p) == ("nodata", None, None)


def test_constant_equal_rates_pass() -> None:
    rate = MetricSpec("success_rate", "decrease", "difference", 0.02, 30)
    assert classify([1.0] * 10, [1.0] * 10, rate)[0] == "pass"


def test_rate_difference_beyond_tolerance_is_low() -> None:
    rate = MetricSpec("success_rate", "decrease", "difference", 0.02, 30)
    cls, effect, _ = classify([0.9] * 10, [1.0] * 10, rate)
    assert cls == "low"
    assert effect == pytest.approx(-0.1)


# ---- intervals -----------------------------------------------------------------------------------
def test_wilson_interval_known_values() -> None:
    # Newcombe (1998), table I: 0/10 -> 0 to 0.2775; 5/10 -> 0.2366 to 0.7634.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


@pytest.mark.parametrize(
    ("s1", "n1", "s2", "n2", "expected"),
    [
        # Newcombe (1998), table II, method 10 (hybrid score from Wilson intervals).
        (56, 70, 48, 80, (0.2000, 0.0524, 0.3339)),
        (9, 10, 3, 10, (0.6000, 0.1705, 0.8090)),
        (6, 7, 2, 7, (0.5714, 0.0582, 0.8062)),
        (5, 56, 0, 29, (0.0893, -0.0381, 0.1926)),
    ],
)
def test_newcombe_interval_known_examples(s1: int, n1: int, s2: int, n2: int, expected: tuple) -> None:
    assert newcombe_interval(s1, n1, s2, n2) == pytest.approx(expected, abs=1e-4)


# ---- judge: the verdict --------------------------------------------------------------------------
def test_better_canary_passes_with_full_score() -> None:
    """Same latency, history 50x smaller (an improvement, so 'low' does not fail)."""
    data = window(
        batches("reference", 12, seed=10, history=6000),
        batches("legacy", 12, seed=11, history=300_000),
    )
    verdict = judge(data, until=NOW)
    metrics = verdict.metrics.set_index("metric")
    assert metrics.loc["history_bytes", "class"] == "low"
    assert not metrics["failed"].any()
    assert verdict.score == 100.0
    assert verdict.verdict == "pass", verdict.reasons
    assert verdict.gates["passed"].all()
    assert verdict.success_diff == 0.0


def test_slower_canary_is_marginal_then_fail_with_stricter_thresholds() -> None:
    """Twice as slow: latency (25) and throughput (15) fail -> score 60."""
    data = window(
        batches("reference", 15, seed=20, e2e_median=4000, history=6000),
        batches("legacy", 15, seed=21, e2e_median=2000, history=300_000),
    )
    verdict = judge(data, until=NOW)
    failed = set(verdict.metrics.loc[verdict.metrics["failed"], "metric"])
    assert failed == {"end_to_end_ms", "memories_per_s"}
    assert verdict.score == pytest.approx(60.0)
    assert verdict.verdict == "fail"
    lenient = judge(data, CanaryConfig(marginal_threshold=50, pass_threshold=95), until=NOW)
    assert lenient.verdict == "marginal"


def test_lower_success_fails_critical_metric_and_hard_gate() -> None:
    data = window(
        batches("reference", 10, seed=30, failed=4, status="partial", history=6000),
        batches("legacy", 10, seed=31, history=300_000),
    )
    verdict = judge(data, until=NOW)
    assert verdict.verdict == "fail"
    gates = verdict.gates.set_index("gate")
    assert not gates.loc["success rate", "passed"]
    assert verdict.success_rate_canary == pytest.approx(0.8)
    assert verdict.success_diff_high is not None and verdict.success_diff_high < 0
    assert any("critical metric success_rate is low" in r for r in verdict.reasons)


def test_too_few_batches_is_not_enough_data_even_when_better() -> None:
    data = window(
        batches("reference", 4, seed=40, e2e_median=500, history=6000),
        batches("legacy", 30, seed=41, history=300_000),
    )
    verdict = judge(data, until=NOW)
    assert verdict.verdict == "not enough data"
    assert not verdict.passed
    assert verdict.metrics["class"].eq("nodata").all()
    assert verdict.score is None


def test_unfinished_old_canary_batch_is_a_timeout() -> None:
    stuck = batches("reference", 1, seed=50, status="processing", history=3000)
    stuck["created_at"] = pd.Timestamp(NOW - timedelta(hours=1))
    data = window(
        batches("reference", 10, seed=51, history=6000), stuck, batches("legacy", 10, seed=52, history=3e5)
    )
    verdict = judge(data, CanaryConfig(batch_timeout_s=600), until=NOW)
    gates = verdict.gates.set_index("gate")
    assert not gates.loc["no timeouts", "passed"]
    assert verdict.verdict == "fail"
    # The same batch, still young: not a timeout.
    assert judge(data, CanaryConfig(batch_timeout_s=7200), until=NOW).verdict == "pass"


def test_parse_error_on_canary_fails_the_gate() -> None:
    canary = batches("reference", 10, seed=60, history=6000)
    canary.at[3, "error_types"] = ["Parse error 142"]
    verdict = judge(window(canary, batches("legacy", 10, seed=61, history=3e5)), until=NOW)
    gates = verdict.gates.set_index("gate")
    assert not gates.loc["no Parse errors", "passed"]
    assert "1 Parse errors" in gates.loc["no Parse errors", "detail"]
    assert verdict.verdict == "fail"


def test_history_budget_gate() -> None:
    data = window(batches("reference", 8, seed=70, history=6000), batches("legacy", 8, seed=71, history=3e5))
    assert judge(data, until=NOW).passed
    tight = judge(data, CanaryConfig(max_canary_history_bytes=1000), until=NOW)
    assert tight.verdict == "fail"
    assert any("history per canary batch" in r for r in tight.reasons)


def test_separate_baseline_window() -> None:
    """At 100% the window has no legacy rows; an earlier window's baseline is used."""
    canary_only = batches("reference", 8, seed=80, history=6000)
    assert judge(canary_only, until=NOW).verdict == "not enough data"
    earlier = window(batches("legacy", 8, seed=81, history=3e5), batches("reference", 3, seed=82))
    verdict = judge(canary_only, baseline=earlier, until=NOW)
    assert (verdict.n_canary, verdict.n_baseline) == (8, 8)
    assert verdict.passed


def test_metric_samples_and_percentiles() -> None:
    data = window(batches("reference", 5, seed=90, total=10, failed=1, status="partial"))
    data.loc[0, "end_to_end_ms"] = 1000.0
    assert metric_samples(data, "success_rate").tolist() == [0.9] * 5
    assert metric_samples(data, "memories_per_s")[0] == pytest.approx(9.0)
    table = path_percentiles(data)
    assert table.loc[0, "batches"] == 5
    assert table.loc[0, "p50"] <= table.loc[0, "p95"] <= table.loc[0, "p99"]


@pytest.mark.parametrize(
    "changes",
    [
        {"marginal_threshold": 96, "pass_threshold": 95},
        {"pass_threshold": 101},
        {"min_samples": 2},
        {"alpha": 0},
        {"metrics": ()},
        {"metrics": (LATENCY, LATENCY)},
    ],
)
def test_invalid_config_is_refused(changes: dict) -> None:
    with pytest.raises(InvalidCanaryConfig):
        CanaryConfig(**changes)


def test_with_metric_changes_one_tolerance() -> None:
    config = CanaryConfig().with_metric("end_to_end_ms", tolerance=0.5)
    assert {m.name: m.tolerance for m in config.metrics}["end_to_end_ms"] == 0.5
    with pytest.raises(InvalidCanaryConfig):
        CanaryConfig().with_metric("nope", tolerance=1)


def test_empty_window_is_not_enough_data() -> None:
    empty = pd.DataFrame({column: pd.Series(dtype="object") for column in BATCH_COLUMNS})
    empty["created_at"] = pd.to_datetime(empty["created_at"], utc=True)
    verdict = judge(empty, until=NOW)
    assert verdict.verdict == "not enough data"
    assert (verdict.n_canary, verdict.n_baseline, verdict.success_diff) == (0, 0, None)
    assert path_percentiles(empty).empty
