"""The fixed-cost breakdowns: parts add up to their totals, names follow the events, summaries per label."""

from __future__ import annotations

import math

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from toolkit.timing import collect, parse_header, span
from toolkit.validation.perf.fixed_cost import FixedCostRun, api_parts, summarize, timeline_parts

T0_MS = 1_700_000_000_000.0
T0_NS = 1_700_000_000_000 * 1_000_000


def _event(event_id: int, kind: int, at_ms: float, **attributes) -> HistoryEvent:
    event = HistoryEvent(event_id=event_id, event_type=kind, **attributes)
    # Whole nanoseconds from integers: epoch milliseconds as floats would blur the test's own times.
    event.event_time.FromNanoseconds(T0_NS + round((at_ms - T0_MS) * 1_000_000))
    return event


def _history() -> list[HistoryEvent]:
    e = EventType
    scheduled = {"activity_task_scheduled_event_attributes": {"activity_type": {"name": "fetch"}}}
    return [
        _event(1, e.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED, T0_MS + 20),
        _event(2, e.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, T0_MS + 20),
        _event(3, e.EVENT_TYPE_WORKFLOW_TASK_STARTED, T0_MS + 23),
        _event(4, e.EVENT_TYPE_WORKFLOW_TASK_COMPLETED, T0_MS + 33),
        _event(5, e.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED, T0_MS + 33, **scheduled),
        _event(
            6,
            e.EVENT_TYPE_ACTIVITY_TASK_STARTED,
            T0_MS + 34,
            activity_task_started_event_attributes={"scheduled_event_id": 5},
        ),
        _event(
            7,
            e.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
            T0_MS + 60,
            activity_task_completed_event_attributes={"scheduled_event_id": 5},
        ),
        _event(8, e.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, T0_MS + 60),
        _event(9, e.EVENT_TYPE_WORKFLOW_TASK_STARTED, T0_MS + 62),
        _event(10, e.EVENT_TYPE_WORKFLOW_TASK_COMPLETED, T0_MS + 70),
        _event(11, e.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, T0_MS + 70),
    ]


def test_timeline_names_each_interval_and_adds_up_to_the_total() -> None:
    parts = timeline_parts(_history(), submitted_at_ns=T0_NS)
    assert parts == {
        "submit": 20.0,
        "other.workflow_task_scheduled": 0.0,
        "wft1.schedule_to_start": 3.0,
        "wft1.run": 10.0,
        "other.activity_task_scheduled": 0.0,
        "fetch.schedule_to_start": 1.0,
        "fetch.run": 26.0,
        "wft2.schedule_to_start": 2.0,
        "wft2.run": 8.0,
        "other.workflow_execution_completed": 0.0,
    }
    assert math.isclose(sum(parts.values()), 70.0)


def test_timeline_sums_exactly_even_when_event_times_go_backwards() -> None:
    events = _history()
    events[5].event_time.FromNanoseconds(T0_NS + 31_000_000)  # started before "scheduled"
    parts = timeline_parts(events, submitted_at_ns=T0_NS)
    assert math.isclose(sum(parts.values()), 70.0)
    assert parts["fetch.schedule_to_start"] == -2.0


def test_api_parts_name_the_spans_and_keep_the_remainders() -> None:
    header = "parse.POST.files;dur=4, parse.POST.classes;dur=5.5, temporal.start;dur=7, total;dur=20"
    parts = api_parts(header, submit_ms=26.0)
    assert parts == {
        "api.file_upload": 4.0,
        "api.create": 5.5,
        "api.temporal_start": 7.0,
        "api.other": 3.5,
        "http": 6.0,
    }
    assert sum(parts.values()) == 26.0


def test_spans_add_up_per_name_inside_a_collection_and_do_nothing_outside() -> None:
    with span("outside"):
        pass
    with collect() as timings:
        for _ in range(3):
            with span("parse.GET.classes"):
                pass
    assert list(timings.spans) == ["parse.GET.classes"]
    header = parse_header(timings.header())
    assert set(header) == {"parse.GET.classes", "total"}
    assert header["total"] >= header["parse.GET.classes"] >= 0


def _run(label: str, run: int, total: float) -> FixedCostRun:
    return FixedCostRun(
        run, label, f"b{run}", f"batch-b{run}", "reference", "completed", total, total / 2, total,
        timeline={"submit": total / 4, "wft1.run": total * 3 / 4},
        api={"api.create": total / 2},
    )  # fmt: skip


def test_summary_gives_percentiles_per_label_and_part() -> None:
    runs = [_run("before", i, float(10 * (i + 1))) for i in range(10)] + [_run("after", 0, 5.0)]
    rows = {(r.label, r.breakdown, r.part): r for r in summarize(runs)}
    total = rows[("before", "total", "submit_to_final")]
    assert (total.runs, total.p50_ms, total.mean_ms) == (10, 55.0, 55.0)
    assert total.p95_ms == pytest.approx(95.5)
    assert rows[("before", "timeline", "wft1.run")].p50_ms == pytest.approx(41.25)  # 3/4 of each total
    assert rows[("after", "total", "submit_to_final")].p50_ms == 5.0
    assert rows[("after", "api", "api.create")].p95_ms == 2.5
