"""The audit's headroom and verdict words for figures at and around Temporal's limits (no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from toolkit.validation.audit import AuditWindow, BadAuditRequest, Verdict
from toolkit.validation.audit.limits import headroom, verdict_for

KIB = 1024
MIB = 1024 * KIB


@pytest.mark.parametrize(
    ("measure", "value", "nearest", "used_pct", "verdict"),
    [
        ("workflow_input", 1536 * KIB, "blob limit", 75.0, Verdict.AT_RISK),  # past the 512 KiB warning
        ("activity_result", 512 * KIB, "blob limit", 25.0, Verdict.AT_RISK),  # exactly at the warning
        ("signal", 384 * KIB, "SDK payload warning (TMPRL1103)", 75.0, Verdict.WATCH),
        ("memo", 128 * KIB, "SDK payload warning (TMPRL1103)", 25.0, Verdict.FINE),
        ("largest_request", 2 * MIB, "gRPC message limit", 50.0, Verdict.AT_RISK),
        ("largest_request", 1 * MIB, "gRPC message limit", 25.0, Verdict.WATCH),
        ("history_bytes", 6 * MIB, "history size warning", 60.0, Verdict.WATCH),
        ("history_bytes", 30 * MIB, "history size limit", 60.0, Verdict.AT_RISK),
        ("history_events", 2_560, "history length warning", 25.0, Verdict.FINE),
        ("history_events", 12_800, "history length limit", 25.0, Verdict.AT_RISK),
    ],
)
def test_nearest_limit_share_and_verdict(
    measure: str, value: int, nearest: str, used_pct: float, verdict: Verdict
) -> None:
    row = headroom(measure, value)
    assert (row.limit.name, row.used_pct, row.verdict) == (nearest, used_pct, verdict)
    assert row.left == row.limit.value - value


def test_the_reason_says_it_in_words() -> None:
    assert headroom("workflow_input", 1536 * KIB).reason == (
        "the largest workflow input, 1.50 MiB, is 75.0 % of the 2 MiB blob limit "
        "(past the 512 KiB SDK payload warning (TMPRL1103))"
    )
    # Past every limit: held against the highest, with nothing left.
    past = headroom("history_events", 60_000)
    assert (past.limit.name, past.left, past.verdict) == ("history length limit", -8_800, Verdict.AT_RISK)
    assert past.reason.endswith("(past the 51,200 events history length limit)")


def test_a_type_takes_its_worst_measure() -> None:
    rows = [headroom("history_events", 100), headroom("activity_input", 300 * KIB), headroom("memo", 10)]
    assert verdict_for(rows) == (Verdict.WATCH, rows[1].reason)
    assert verdict_for([]) == (Verdict.FINE, "nothing measured")


def test_a_window_must_be_ordered_and_zoned() -> None:
    start, end = datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC)
    assert AuditWindow(start, end, 'TaskQueue = "q"').visibility_query() == (
        'StartTime >= "2026-01-02T00:00:00.000000Z" AND StartTime < "2026-01-03T00:00:00.000000Z" '
        'AND (TaskQueue = "q")'
    )
    with pytest.raises(BadAuditRequest, match="empty window"):
        AuditWindow(end, start)
    with pytest.raises(BadAuditRequest, match="time zone"):
        AuditWindow(datetime(2026, 1, 2), end)
