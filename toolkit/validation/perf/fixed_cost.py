"""The fixed cost of a small batch, submit to final status, and where it goes (issue 10).

One run = one batch submitted through the HTTP API (as a user would) and waited for. Two breakdowns
come out of each run, each summing exactly to its own total:

- **timeline** (submit → workflow closed): ``submit`` is the client's send until Temporal recorded
  the workflow start; then every interval between consecutive history events, named by the event
  that ends it (``wft1.schedule_to_start``, ``wft1.run``, ``fetch_and_process_batch_memories.run``,
  ``send_batch_webhook.schedule_to_start``, …). The intervals telescope, so they add up to the total.
- **api** (the POST as the client saw it): the API's ``Server-Timing`` spans (session check, rollout
  flags, file upload, create, Temporal start, workflowId update), ``api.other`` (the rest of the
  server's time: body, validation, gzip, framework) and ``http`` (the client's round trip minus the
  server's time). Some of these overlap the timeline's first workflow task: the workflow runs while
  the API still answers.

Every time here is a wall-clock reading of this one machine (client and Temporal server share the
clock). Figures are only meaningful beside others from the same run: print them with the run's
context (machine, load), never as bare promises.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from toolkit.settings import Settings
from toolkit.timing import HEADER, TOTAL, parse_header
from toolkit.validation.workloads import make_memories

SUBMIT_TIMEOUT_S = 30.0
RESULT_TIMEOUT = timedelta(seconds=120)

# Server-Timing span → the name the breakdown reports (a span not listed keeps its own name).
API_PARTS = {
    "parse.GET.users": "api.session_check",
    "parse.GET.config": "api.rollout_flags",
    "parse.POST.files": "api.file_upload",
    "parse.POST.classes": "api.create",
    "temporal.start": "api.temporal_start",
    "parse.PUT.classes": "api.workflow_id_update",
    # Reads of BatchMemoryRequest during a submit: the per-user in-flight count (and, with an
    # Idempotency-Key, the lookup of an earlier submission).
    "parse.GET.classes": "api.find_or_count",
}


class FixedCostError(Exception):
    """A measured batch did not go as a measurement needs (refused, wrong path, not completed)."""


@dataclass(frozen=True)
class FixedCostRun:
    """One measured batch. ``timeline`` sums to ``total_ms``; ``api`` sums to ``submit_ms``."""

    run: int
    label: str
    batch_id: str
    workflow_id: str
    storage: str
    status: str
    total_ms: float  # client send → WorkflowExecutionCompleted (the final status is written before)
    submit_ms: float  # the POST's round trip as the client saw it
    client_ms: float  # client send → the client holds the workflow's result
    timeline: dict[str, float] = field(default_factory=dict)
    api: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PartRow:
    """One line of a summary: a part's p50/p95 over the runs of one label."""

    label: str
    breakdown: str  # "total", "timeline" or "api"
    part: str
    runs: int
    p50_ms: float
    p95_ms: float
    mean_ms: float


def _short(event_type: int) -> str:
    return EventType.Name(event_type).removeprefix("EVENT_TYPE_").lower()


def timeline_parts(events: Sequence[HistoryEvent], submitted_at_ns: int) -> dict[str, float]:
    """Name every interval (ms) from the client's send to the last event; the values sum to the whole.

    ``submitted_at_ns`` is the client's wall clock (``time.time_ns()``) when it sent the POST. All
    arithmetic is on integer nanoseconds: epoch milliseconds as floats would blur the intervals.
    """
    parts: dict[str, float] = {}

    def add(name: str, ms: float) -> None:
        parts[name] = parts.get(name, 0.0) + ms

    if not events:
        return parts
    add("submit", (events[0].event_time.ToNanoseconds() - submitted_at_ns) / 1e6)
    activity_names: dict[int, str] = {}
    seen: dict[str, int] = {}
    wft = 0
    previous = events[0].event_time.ToNanoseconds()
    for event in events[1:]:
        now = event.event_time.ToNanoseconds()
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            wft += 1
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            # A second activity of the same type (a retry is the same event) gets a number.
            seen[name] = seen.get(name, 0) + 1
            activity_names[event.event_id] = name if seen[name] == 1 else f"{name}{seen[name]}"
        if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            name = f"wft{wft}.schedule_to_start"
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            name = f"wft{wft}.run"
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            scheduled = event.activity_task_started_event_attributes.scheduled_event_id
            name = f"{activity_names.get(scheduled, 'activity')}.schedule_to_start"
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            scheduled = event.activity_task_completed_event_attributes.scheduled_event_id
            name = f"{activity_names.get(scheduled, 'activity')}.run"
        else:
            # Bookkeeping events written together with the one before (scheduled, completed): ~0 ms.
            name = f"other.{_short(kind)}"
        add(name, (now - previous) / 1e6)
        previous = now
    return parts


def api_parts(server_timing: str, submit_ms: float) -> dict[str, float]:
    """The POST's time by part: named spans, the server's remainder, and the client-side round trip."""
    spans = parse_header(server_timing)
    server_total = spans.pop(TOTAL, 0.0)
    parts: dict[str, float] = {}
    for name, ms in spans.items():
        key = API_PARTS.get(name, name)
        parts[key] = parts.get(key, 0.0) + ms
    parts["api.other"] = server_total - sum(parts.values())
    parts["http"] = submit_ms - server_total
    return parts


async def measure_one(
    http: httpx.AsyncClient,
    temporal: Client,
    *,
    session_token: str,
    memories: Sequence[dict[str, Any]],
    run: int = 0,
    label: str = "",
    webhook_url: str | None = None,
) -> FixedCostRun:
    """Submit one batch through the API (``http`` has the API's base URL), wait for it, break it down."""
    body: dict[str, Any] = {"memories": list(memories)}
    if webhook_url:
        body["webhook_url"] = webhook_url
    submitted_at_ns = time.time_ns()
    started = time.perf_counter()
    response = await http.post(
        "/v1/memory/batch",
        json=body,
        headers={"X-Parse-Session-Token": session_token},
        timeout=SUBMIT_TIMEOUT_S,
    )
    submit_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 202:
        raise FixedCostError(f"submit answered {response.status_code}: {response.text[:300]}")
    accepted = response.json()
    handle = temporal.get_workflow_handle(accepted["workflow_id"])
    summary = await handle.result(rpc_timeout=RESULT_TIMEOUT)
    client_ms = (time.perf_counter() - started) * 1000
    history = await handle.fetch_history()
    events = list(history.events)
    timeline = timeline_parts(events, submitted_at_ns)
    status = getattr(summary, "status", None) or (summary or {}).get("status", "?")
    return FixedCostRun(
        run=run,
        label=label,
        batch_id=accepted["batch_id"],
        workflow_id=accepted["workflow_id"],
        storage=accepted.get("storage", "?"),
        status=str(status),
        total_ms=(events[-1].event_time.ToNanoseconds() - submitted_at_ns) / 1e6 if events else math.nan,
        submit_ms=submit_ms,
        client_ms=client_ms,
        timeline=timeline,
        api=api_parts(response.headers.get(HEADER, ""), submit_ms),
    )


async def measure_fixed_cost(
    settings: Settings,
    session_token: str,
    *,
    runs: int = 20,
    warmup: int = 2,
    memories: int = 10,
    workload: str = "chitchat",
    api_urls: dict[str, str] | None = None,
    temporal: Client | None = None,
    pause_s: float = 0.05,
) -> list[FixedCostRun]:
    """Measure ``runs`` small batches per API (label → base URL; default: the stack's API).

    With several APIs (e.g. "before" and "after" variants), submissions alternate between them, so
    a burst of load from elsewhere on the machine hits every variant alike. ``warmup`` runs per label
    come first and are not returned (connections, caches, the worker's first workflow).
    The user behind ``session_token`` must be on the reference path (rollout flags).
    """
    from toolkit.temporal.client import connect

    urls = api_urls or {"": settings.api_url}
    client = temporal or await connect(settings)
    batch = make_memories(workload, memories)
    results: list[FixedCostRun] = []
    clients = {label: httpx.AsyncClient(base_url=url) for label, url in urls.items()}
    try:
        for run in range(-warmup, runs):
            for label, http in clients.items():
                # A fresh batch id every time; the same memories (content does not change the cost).
                measured = await measure_one(
                    http, client, session_token=session_token, memories=batch, run=run, label=label
                )
                if measured.storage != "reference":
                    raise FixedCostError(
                        f"the API put the batch on the {measured.storage} path: turn the rollout on "
                        "(`toolkit rollout on --percent 100`) to measure the reference path"
                    )
                if run >= 0:
                    results.append(measured)
                await asyncio.sleep(pause_s)
    finally:
        for http in clients.values():
            await http.aclose()
    return results


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    # Inclusive linear interpolation, like numpy's default.
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1] if q < 100 else ordered[-1]


def summarize(runs: Iterable[FixedCostRun]) -> list[PartRow]:
    """p50/p95/mean per label for the totals and for every part of both breakdowns."""
    by_label: dict[str, list[FixedCostRun]] = {}
    for r in runs:
        by_label.setdefault(r.label, []).append(r)
    rows: list[PartRow] = []
    for label, group in by_label.items():
        series: dict[tuple[str, str], list[float]] = {
            ("total", "submit_to_final"): [r.total_ms for r in group],
            ("total", "submit_response"): [r.submit_ms for r in group],
            ("total", "client_result"): [r.client_ms for r in group],
        }
        for breakdown in ("timeline", "api"):
            names: list[str] = []
            for r in group:
                names += [n for n in getattr(r, breakdown) if n not in names]
            for name in names:
                series[(breakdown, name)] = [getattr(r, breakdown).get(name, 0.0) for r in group]
        for (breakdown, part), values in series.items():
            rows.append(
                PartRow(
                    label,
                    breakdown,
                    part,
                    len(values),
                    _percentile(values, 50),
                    _percentile(values, 95),
                    statistics.fmean(values),
                )
            )
    return rows


def to_frame(rows: Iterable[Any]):  # -> pandas.DataFrame
    """Rows (runs or summary lines) as a DataFrame; a run's breakdowns become ``timeline.*``/``api.*``."""
    import dataclasses

    import pandas as pd

    flat = []
    for row in rows:
        record = dataclasses.asdict(row)
        for breakdown in ("timeline", "api"):
            for name, ms in (record.pop(breakdown, None) or {}).items():
                record[f"{breakdown}.{name}"] = ms
        flat.append(record)
    return pd.DataFrame(flat)


def format_summary(rows: Sequence[PartRow]) -> list[str]:
    """Text lines for a terminal: one block per label."""
    lines = []
    for label in dict.fromkeys(r.label for r in rows):
        lines.append(f"-- {label or 'fixed cost'}: ms, p50 / p95 / mean over {rows[0].runs} runs")
        for r in (r for r in rows if r.label == label):
            lines.append(
                f"   {r.breakdown:<8} {r.part:<44} {r.p50_ms:>8.1f} {r.p95_ms:>8.1f} {r.mean_ms:>8.1f}"
            )
    return lines


async def compare_variants(
    settings: Settings, session_token: str, variants: Sequence[Any], *, runs: int = 20, warmup: int = 2
) -> list[FixedCostRun]:
    """Start each :class:`~toolkit.validation.perf.variants.Variant`; measure them in one run, alternating."""
    from toolkit.validation.perf.variants import running

    async with running(settings, list(variants)) as started:
        urls = {v.variant.label: v.api_url for v in started}
        return await measure_fixed_cost(settings, session_token, runs=runs, warmup=warmup, api_urls=urls)


async def cpu_ms_per_batch(
    settings: Settings, session_token: str, *, runs: int = 20, temporal: Client | None = None
) -> tuple[list[FixedCostRun], dict[str, float]]:
    """Measure ``runs`` batches on the stack's API and worker; also CPU ms per batch of each process.

    CPU time barely depends on how loaded the machine is, so it says what a batch costs each part
    even when wall-clock figures are inflated by others' load. ``bench`` is this measuring process.
    """
    import os

    from toolkit.validation.perf import procstats

    pids = {**procstats.stack_pids(settings.stack_dir), "bench": os.getpid()}
    before = procstats.sample(pids)
    measured = await measure_fixed_cost(settings, session_token, runs=runs, warmup=0, temporal=temporal)
    delta = procstats.cpu_delta(before, procstats.sample(pids))
    return measured, {part: round(seconds * 1000 / runs, 1) for part, seconds in delta.items()}
