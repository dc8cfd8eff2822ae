"""The notebooks' gates would fail if the new path regressed (plain functions, no server needed)."""

from __future__ import annotations

import pandas as pd
import pytest

from toolkit.validation.metrics import (
    compression_misses,
    compression_table,
    payload_gate_failures,
    payload_reduction,
)


def _sweep(
    ref_input: int, ref_history: int, legacy_input: int | None, legacy_history: int | None
) -> pd.DataFrame:
    rows = [
        {
            "workload": "chitchat",
            "memories": 1000,
            "path": "reference",
            "input_bytes": ref_input,
            "history_bytes": ref_history,
            "history_events": 11,
            "success_rate": 1.0,
            "error": None,
        },
        {
            "workload": "chitchat",
            "memories": 1000,
            "path": "legacy",
            "input_bytes": legacy_input,
            "history_bytes": legacy_history,
            "history_events": 3000,
            "success_rate": 1.0 if legacy_input else 0.0,
            "error": None if legacy_input else "RPCError: Blob data size exceeds limit.",
        },
    ]
    return pd.DataFrame(rows)


def test_a_healthy_reference_path_passes_and_the_reduction_is_computed() -> None:
    table = payload_reduction(_sweep(73, 4_000, 200_000, 2_000_000))
    assert payload_gate_failures(table) == []
    row = table.iloc[0]
    assert row.input_reduction_pct == pytest.approx(99.9635)  # 73 B is 0.0365 % of 200,000 B
    assert row.history_reduction_pct == pytest.approx(99.8)


@pytest.mark.parametrize(
    ("ref_input", "ref_history", "expected"),
    [
        (101, 4_000, "input 101 B > 100 B"),
        (73, 10_001, "history 10,001 B > 10,000 B"),
    ],
)
def test_input_over_100_bytes_or_history_over_10_kb_fails(
    ref_input: int, ref_history: int, expected: str
) -> None:
    failures = payload_gate_failures(payload_reduction(_sweep(ref_input, ref_history, 200_000, 2_000_000)))
    assert [f for f in failures if expected in f], failures


def test_a_reduction_below_target_fails_even_under_the_absolute_limits() -> None:
    # Legacy input of 5,000 B: 73 B is "only" 98.5 % smaller.
    failures = payload_gate_failures(payload_reduction(_sweep(73, 4_000, 5_000, 60_000)))
    assert failures == [
        "1,000 memories: input reduction 98.54% <= 99.0%",
        "1,000 memories: history reduction 93.33% <= 95.0%",
    ]


def test_a_refused_legacy_batch_has_no_reduction_but_the_reference_limits_still_hold() -> None:
    table = payload_reduction(_sweep(73, 4_000, None, None))
    assert table.iloc[0].legacy_error.startswith("RPCError")
    assert pd.isna(table.iloc[0].input_reduction_pct)
    assert payload_gate_failures(table) == []
    assert payload_gate_failures(payload_reduction(_sweep(73, 12_000, None, None))) != []


def test_chitchat_below_5x_at_1000_fails_the_compression_gate() -> None:
    table = compression_table(["chitchat"], [1000], {"gzip": [6]}, min_seconds=0.0)
    assert compression_misses(table, workloads=["chitchat"]) == []
    regressed = table.assign(ratio=4.99)
    (miss,) = compression_misses(regressed, workloads=["chitchat"])
    assert (miss.workload, miss.memories, miss.ratio) == ("chitchat", 1000, 4.99)
    assert str(miss) == "chitchat at 1,000 memories: ratio 4.99x < target 5x"


def test_a_gate_on_a_missing_cell_is_an_error_not_a_pass() -> None:
    table = compression_table(["chitchat"], [100], {"gzip": [6]}, min_seconds=0.0)
    with pytest.raises(ValueError, match="no gzip-6 row at 1000"):
        compression_misses(table, workloads=["chitchat"])
