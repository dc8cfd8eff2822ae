"""The canary judge on known distributions: each case names the class or verdict it must produce.

A window must be large enough for the judge to have caught a regression at each tolerance (40 batches
of 50 memories per path is, for these distributions); smaller ones are ``not enough data`` on purpose.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu

from toolkit.validation.canary import (
    DEFAULT_METRICS,
    CanaryConfig,
    InvalidCanaryConfig,
    MetricSpec,
    classify,
    is_infrastructure_error,
    judge,
    metric_samples,
    newcombe_interval,
    path_percentiles,
    wilson_interval,
)
from toolkit.validation.metrics import BATCH_COLUMNS

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DECIDABLE = 40  # batches per path that let the judge see a regression at every default tolerance here
LATENCY = MetricSpec("end_to_end_ms", "increase", "ratio", 0.25, 25)


def batches(
    storage: str,
    n: int,
    *,
    seed: int,
    e2e_median: float = 2000.0,
    history: float = 5000.0,
    total: int = 50,
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
        batches("reference", DECIDABLE, seed=10, history=6000),
        batches("legacy", DECIDABLE, seed=11, history=300_000),
    )
    verdict = judge(data, until=NOW)
    metrics = verdict.metrics.set_index("metric")
    assert metrics.loc["history_bytes", "class"] == "low"
    assert metrics["detectable"].all() and verdict.batches_needed is None
    assert not metrics["failed"].any()
    assert verdict.score == 100.0
    assert verdict.verdict == "pass", verdict.reasons
    assert verdict.gates["passed"].all()
    assert verdict.success_diff == 0.0


def test_slower_canary_is_marginal_then_fail_with_stricter_thresholds() -> None:
    """Twice as slow: latency (25) and throughput (15) fail -> score 60."""
    data = window(
        batches("reference", DECIDABLE, seed=20, e2e_median=4000, history=6000),
        batches("legacy", DECIDABLE, seed=21, e2e_median=2000, history=300_000),
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
        batches("reference", 10, seed=30, total=20, failed=4, status="partial", history=6000),
        batches("legacy", 10, seed=31, total=20, history=300_000),
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
        batches("reference", DECIDABLE, seed=51, history=6000),
        stuck,
        batches("legacy", DECIDABLE, seed=52, history=3e5),
    )
    verdict = judge(data, CanaryConfig(batch_timeout_s=600), until=NOW)
    gates = verdict.gates.set_index("gate")
    assert not gates.loc["no timeouts", "passed"]
    assert verdict.verdict == "fail"
    # The same batch, still young: not a timeout.
    assert judge(data, CanaryConfig(batch_timeout_s=7200), until=NOW).verdict == "pass"


def test_parse_infrastructure_error_on_canary_fails_the_gate() -> None:
    canary = batches("reference", DECIDABLE, seed=60, history=6000)
    canary.at[3, "error_types"] = ["Parse HTTP 503"]
    verdict = judge(window(canary, batches("legacy", DECIDABLE, seed=61, history=3e5)), until=NOW)
    gates = verdict.gates.set_index("gate")
    assert not gates.loc["no Parse infrastructure errors", "passed"]
    assert "1 Parse infrastructure errors" in gates.loc["no Parse infrastructure errors", "detail"]
    assert verdict.verdict == "fail"


def test_data_errors_present_on_both_paths_do_not_fail_the_gate() -> None:
    """Parse refusing a metadata key with a dot (error 121) is the user's data, the same on either path:
    one such memory on each path is not an infrastructure failure (this failed the gate before)."""
    canary = batches("reference", DECIDABLE, seed=62, history=6000)
    baseline = batches("legacy", DECIDABLE, seed=63, history=3e5)
    for frame in (canary, baseline):
        frame.loc[5, ["status", "successful", "failed"]] = ["partial", 49, 1]
        frame.at[5, "error_types"] = ["Parse error 121"]
    verdict = judge(window(canary, baseline), until=NOW)
    gate = verdict.gates.set_index("gate").loc["no Parse infrastructure errors"]
    assert gate["passed"], gate["detail"]
    assert "0 Parse infrastructure errors" in gate["detail"] and "Parse error 121 ×1" in gate["detail"]
    assert verdict.verdict == "pass", verdict.reasons


@pytest.mark.parametrize(
    ("error_type", "infrastructure"),
    [
        ("Parse error 121", False),  # invalid nested key: a '.' in a metadata key
        ("Parse error 105", False),  # invalid field name
        ("Parse error 142", False),  # refused by a validation rule
        ("Parse error 1", True),  # internal server error
        ("Parse error 124", True),  # timeout
        ("Parse error 209", True),  # invalid session: the worker's own credentials
        ("Parse HTTP 503", True),
        ("Parse error", True),  # no code at all
        ("Parse /batch answered 3 results for 4 requests", True),
        ("invalid memory", False),  # refused by the writer before Parse, not a Parse error
        ("not processed", False),
    ],
)
def test_which_error_types_are_infrastructure(error_type: str, infrastructure: bool) -> None:
    assert is_infrastructure_error(error_type) is infrastructure


def test_history_budget_gate() -> None:
    data = window(
        batches("reference", DECIDABLE, seed=70, history=6000),
        batches("legacy", DECIDABLE, seed=71, history=3e5),
    )
    assert judge(data, until=NOW).passed
    tight = judge(data, CanaryConfig(max_canary_history_bytes=1000), until=NOW)
    assert tight.verdict == "fail"
    assert any("history per canary batch" in r for r in tight.reasons)


def test_separate_baseline_window() -> None:
    """At 100% the window has no legacy rows; an earlier window's baseline is used."""
    canary_only = batches("reference", DECIDABLE, seed=80, history=6000)
    assert judge(canary_only, until=NOW).verdict == "not enough data"
    earlier = window(batches("legacy", DECIDABLE, seed=81, history=3e5), batches("reference", 3, seed=82))
    verdict = judge(canary_only, baseline=earlier, until=NOW)
    assert (verdict.n_canary, verdict.n_baseline) == (DECIDABLE, DECIDABLE)
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
        {"min_samples": 3},  # the smallest p at 3 against 3 is 0.10: nothing could ever be flagged
        {"min_samples": 4, "alpha": 0.01},  # 0.029 at 4 against 4
        {"power": 1.0},
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


# ---- defects found by review, on cases with known answers -----------------------------------------
def test_a_chunked_100k_batch_is_held_to_the_budget_per_chunk() -> None:
    """One 100,000-memory batch in 20 chunk files, with the 17,865 B of history measured for it (README,
    "Big batches"): 893 B per chunk, well inside the plan's 10 KB for a one-file batch. Held against the
    whole budget per batch, it failed the gate."""
    canary = batches("reference", DECIDABLE, seed=100, history=2400)
    canary["chunks"] = 1
    canary.loc[0, ["total", "successful", "history_bytes", "chunks"]] = [100_000, 100_000, 17_865, 20]
    data = window(canary, batches("legacy", DECIDABLE, seed=101, history=3e5))
    gate = judge(data, until=NOW).gates.set_index("gate").loc["history per canary batch"]
    assert gate["passed"], gate["detail"]
    # The same batch with 11,000 B per chunk (220,000 B over 20) is over the budget.
    canary.loc[0, "history_bytes"] = 220_000
    gate = judge(window(canary, data[data.storage == "legacy"]), until=NOW).gates.set_index("gate")
    assert not gate.loc["history per canary batch", "passed"]
    assert (
        "11,000 B per chunk (220,000 B over 20 chunk files" in gate.loc["history per canary batch", "detail"]
    )


def test_min_samples_that_can_never_flag_anything_is_refused_with_the_reason() -> None:
    # Why: the exact two-sided Mann–Whitney p-value of complete separation at 3 against 3.
    assert mannwhitneyu([1, 2, 3], [4, 5, 6], alternative="two-sided").pvalue == pytest.approx(0.1)
    with pytest.raises(InvalidCanaryConfig, match=r"min_samples=3 .* alpha=0.05.* is 0\.1\b"):
        CanaryConfig(min_samples=3)
    assert CanaryConfig(min_samples=4).min_samples == 4  # 2/70 = 0.029 < 0.05


def test_four_against_four_with_no_difference_is_not_a_pass() -> None:
    """Notebook 03's old CI window: 4 batches per path of a few memories, no difference. It was "pass,
    score 100"; the window could not have caught a 25 % slowdown nor a 2-point success drop."""
    data = window(
        batches("reference", 4, seed=110, total=4, history=2000),
        batches("legacy", 4, seed=111, total=4, history=7000),
    )
    verdict = judge(data, CanaryConfig(min_samples=4), until=NOW)
    assert verdict.verdict == "not enough data"
    metrics = verdict.metrics.set_index("metric")
    assert metrics.loc["end_to_end_ms", "class"] == "inconclusive"
    assert metrics.loc["success_rate", "class"] == "inconclusive"
    # 4 batches of 4 memories cannot see a 2-point drop; it would take far more than 4 batches.
    assert verdict.detectable_success_drop is not None and verdict.detectable_success_drop > 0.2
    assert verdict.detectable_latency_ratio is not None and verdict.detectable_latency_ratio > 1.25
    assert verdict.batches_needed is not None and verdict.batches_needed > 20
    assert any("batches per path needed" in reason for reason in verdict.reasons)
    assert verdict.summary()["batches_needed_per_path"] == verdict.batches_needed


def test_a_real_regression_still_fails_in_a_small_window() -> None:
    """Power limits a pass, never a failure the window did see: 8 batches 4× slower fail."""
    data = window(
        batches("reference", 8, seed=120, e2e_median=8000, history=2000),
        batches("legacy", 8, seed=121, e2e_median=2000, history=7000),
    )
    verdict = judge(data, CanaryConfig(min_samples=4), until=NOW)
    assert verdict.metrics.set_index("metric").loc["end_to_end_ms", "class"] == "high"
    assert verdict.verdict == "fail"


def test_what_it_could_detect_names_every_metric_against_its_tolerance() -> None:
    data = window(
        batches("reference", DECIDABLE, seed=130, history=6000),
        batches("legacy", DECIDABLE, seed=131, history=3e5),
    )
    text = judge(data, until=NOW).what_it_could_detect()
    assert text.startswith(f"With {DECIDABLE} canary and {DECIDABLE} baseline batches, at alpha 0.05")
    for spec in DEFAULT_METRICS:
        assert spec.name in text
    assert "(tolerance 1.25×)" in text and "(tolerance 2 points)" in text
