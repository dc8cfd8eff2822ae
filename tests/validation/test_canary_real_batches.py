"""The judge on real batches: traffic through the API at 50 %, read back with collect_batches."""

from __future__ import annotations

from typing import Any

from toolkit.validation.canary import CanaryConfig, judge

CONFIG = CanaryConfig(min_samples=4)


def test_traffic_reached_both_paths_as_predicted(canary_window: Any) -> None:
    submitted = canary_window.traffic.submitted
    assert len(submitted) == canary_window.plan.batches == 8
    assert submitted["status"].eq("completed").all(), submitted
    assert canary_window.traffic.mismatched.empty
    assert submitted["storage"].value_counts().to_dict() == {"legacy": 4, "reference": 4}
    # The traffic put the flags back as it found them.
    assert canary_window.traffic.flags_after == canary_window.traffic.flags_before
    # Every submitted batch is in the window collect_batches reads.
    assert set(submitted["batch_id"]) == set(canary_window.batches["batch_id"])


def test_judge_on_real_batches(canary_window: Any) -> None:
    verdict = judge(canary_window.batches, CONFIG, until=canary_window.traffic.until)
    assert (verdict.n_canary, verdict.n_baseline) == (4, 4)
    metrics = verdict.metrics.set_index("metric")
    # 4 batches of 2-6 memories per path cannot show that success did not drop by 2 points: the judge
    # says so, with what it could have seen and how many batches it would need, instead of "pass".
    assert verdict.verdict == "not enough data", verdict.reasons
    assert metrics.loc["success_rate", "class"] == "inconclusive"
    assert verdict.detectable_success_drop is not None and verdict.detectable_success_drop > 0.02
    assert verdict.batches_needed is not None and verdict.batches_needed > 4
    # The reference path's history is a few KB whatever the batch size; legacy's grows with it.
    assert metrics.loc["history_bytes", "class"] == "low"
    assert not metrics.loc["history_bytes", "failed"]
    assert verdict.gates["passed"].all(), verdict.gates
    assert verdict.success_rate_canary == verdict.success_rate_baseline == 1.0
    assert verdict.success_diff_low < 0 < verdict.success_diff_high


def test_real_batches_too_few_for_a_stricter_judge(canary_window: Any) -> None:
    verdict = judge(canary_window.batches, CanaryConfig(min_samples=50), until=canary_window.traffic.until)
    assert verdict.verdict == "not enough data"
    assert not verdict.passed


def test_real_history_over_a_tight_budget_fails(canary_window: Any) -> None:
    tight = CanaryConfig(min_samples=4, max_canary_history_bytes=1000)
    verdict = judge(canary_window.batches, tight, until=canary_window.traffic.until)
    assert verdict.verdict == "fail"
    gates = verdict.gates.set_index("gate")
    assert not gates.loc["history per canary batch", "passed"]
