"""Round trips counted by the servers that answer them: Parse Server's requests, Temporal's calls.

Counted where the work arrives, so every caller is seen (API, worker, this process) without touching them:

- **Parse**: ``parse_server_requests_total{method,resource,class,status}`` and
  ``parse_server_batch_subrequests_total{method,resource,class}`` from the stack's Parse Server
  (``parse-server/request-counts.js``, at :attr:`Settings.parse_metrics_url`, served when the stack started it
  with ``PARSE_REQUEST_COUNTS=1``). Parse itself keeps no such
  count. A ``/batch`` request is named by the classes of its sub-requests: ``POST batch/Memory`` (the memory
  writer) apart from ``POST batch/BatchSlot+BatchSlotHold`` (an in-flight slot taken or given back).
- **Temporal**: the dev server's own ``service_requests{namespace,operation,service_name="frontend"}``
  (every gRPC call a client or worker made in the namespace, long polls included) and
  ``persistence_requests{namespace}`` (its reads and writes to its database), at
  :attr:`Settings.temporal_metrics_url`. The SDK's metrics would see one process only; the server sees all.

A measurement reads both before and after a window and keeps the difference (:func:`delta`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import httpx

from toolkit.settings import Settings

SCRAPE_TIMEOUT_S = 10.0
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(.)")
SETTLE_POLL_S = 0.25
SETTLE_QUIET_S = 1.5  # longer than the Temporal dev server's metrics lag (~1 s measured)
SETTLE_MAX_S = 30.0
Mark = TypeVar("Mark")
# Calls a worker makes whether or not there is work: long polls (kept open all the time, so their number
# follows time and pollers), its periodic heartbeat and its start-up questions.
POLL_PREFIX = "Poll"
IDLE_OPERATIONS = frozenset({"RecordWorkerHeartbeat", "DescribeNamespace", "GetSystemInfo", "ShutdownWorker"})
# The history service's count of workflows closing, one counter per way of closing.
WORKFLOW_CLOSES = tuple(
    f"workflow_{way}" for way in ("success", "failed", "timeout", "terminate", "cancel", "continued_as_new")
)


class CountsUnavailable(Exception):
    """A server's metrics could not be read (a stack started before it served them, or not local)."""


@dataclass(frozen=True)
class ServerCounts:
    # "POST batch/Memory", "GET classes/BatchMemoryRequest", "POST files", … → requests answered
    parse_requests: Counter[str] = field(default_factory=Counter)
    parse_error_answers: int = 0  # of those, answered 4xx or 5xx
    # Operations inside the /batch requests: "POST classes/Memory" → memories sent to be written
    parse_batch_subrequests: Counter[str] = field(default_factory=Counter)
    temporal_calls: Counter[str] = field(default_factory=Counter)  # gRPC operation → calls
    temporal_persistence: int = 0  # the dev server's own database operations
    temporal_workflows_closed: int = 0  # workflows of the namespace that closed (completed, failed, …)

    @property
    def parse_total(self) -> int:
        return sum(self.parse_requests.values())

    @property
    def temporal_work_calls(self) -> int:
        """Calls that carry work (starts, task completions, activity heartbeats…): idle traffic left out."""
        return sum(n for op, n in self.temporal_calls.items() if not is_idle_operation(op))

    @property
    def temporal_idle_calls(self) -> int:
        """Long polls and the workers' own heartbeats: they follow time and pollers, not batches."""
        return sum(n for op, n in self.temporal_calls.items() if is_idle_operation(op))

    @property
    def work(self) -> tuple[int, int, int]:
        """What moves only when work is done: Parse requests, /batch sub-requests, Temporal work calls."""
        return self.parse_total, sum(self.parse_batch_subrequests.values()), self.temporal_work_calls


def is_idle_operation(operation: str) -> bool:
    return operation.startswith(POLL_PREFIX) or operation in IDLE_OPERATIONS


def _samples(text: str, *names: str) -> Iterator[tuple[dict[str, str], int]]:
    """(labels, value) of every sample of the named counters in Prometheus text.

    A line scan, not a full parse: the dev server's page is several MB of histograms, which
    ``prometheus_client``'s parser takes seconds to read, and only a few counters matter here.
    """
    prefixes = tuple(f"{name}{{" for name in names)
    for line in text.splitlines():
        if line.startswith(prefixes):
            labels, _, value = line[line.index("{") + 1 :].rpartition("} ")
            yield {k: _unescape(v) for k, v in _LABEL.findall(labels)}, int(float(value))


def _unescape(value: str) -> str:
    """Prometheus label escapes: ``\\\\``, ``\\"`` and ``\\n``."""
    return _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _route(labels: dict[str, str]) -> str:
    """``{"method": "POST", "resource": "classes", "class": "Memory"}`` → ``"POST classes/Memory"``."""
    return f"{labels['method']} {labels['resource']}" + (f"/{labels['class']}" if labels.get("class") else "")


def parse_counts_from_text(text: str) -> tuple[Counter[str], int, Counter[str]]:
    """(requests by route, error answers, /batch sub-requests by route) from Parse's /metrics."""
    requests: Counter[str] = Counter()
    errors = 0
    for labels, value in _samples(text, "parse_server_requests_total"):
        requests[_route(labels)] += value
        if labels.get("status") in {"4xx", "5xx"}:
            errors += value
    subrequests: Counter[str] = Counter()
    for labels, value in _samples(text, "parse_server_batch_subrequests_total"):
        subrequests[_route(labels)] += value
    return requests, errors, subrequests


def temporal_counts_from_text(text: str, namespace: str) -> tuple[Counter[str], int, int]:
    """(frontend calls by operation, persistence operations, closed workflows) of one namespace."""
    calls: Counter[str] = Counter()
    for labels, value in _samples(text, "service_requests", "service_requests_total"):
        if labels.get("namespace") == namespace and labels.get("service_name") == "frontend":
            calls[labels["operation"]] += value
    persistence = sum(
        value
        for labels, value in _samples(text, "persistence_requests", "persistence_requests_total")
        if labels.get("namespace") == namespace
    )
    closed = sum(
        value for labels, value in _samples(text, *WORKFLOW_CLOSES) if labels.get("namespace") == namespace
    )
    return calls, persistence, closed


async def _scrape(http: httpx.AsyncClient, url: str | None, what: str) -> str:
    if url is None:
        raise CountsUnavailable(
            f"no {what} metrics URL: restart the local stack (`toolkit stack down` then `up`) so it picks "
            "TEMPORAL_METRICS_PORT"
        )
    try:
        response = await http.get(url, timeout=SCRAPE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise CountsUnavailable(f"{what} metrics at {url} unreachable: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise CountsUnavailable(
            f"{what} metrics at {url} answered {response.status_code}: a stack started by an older "
            "checkout does not serve them (nor a Parse Server without PARSE_REQUEST_COUNTS=1); restart it "
            "(`toolkit stack down` then `up`)"
        )
    return response.text


async def read(http: httpx.AsyncClient, settings: Settings) -> ServerCounts:
    """The counters as they stand now (since each server started; Temporal's lag by up to a second)."""
    parse_text = await _scrape(http, settings.parse_metrics_url, "Parse Server")
    temporal_text = await _scrape(http, settings.temporal_metrics_url, "Temporal dev server")
    requests, errors, subrequests = parse_counts_from_text(parse_text)
    calls, persistence, closed = temporal_counts_from_text(temporal_text, settings.temporal_namespace)
    return ServerCounts(requests, errors, subrequests, calls, persistence, closed)


def delta(before: ServerCounts, after: ServerCounts) -> ServerCounts:
    """What the servers counted between two readings (series that did not move are left out)."""
    return ServerCounts(
        after.parse_requests - before.parse_requests,
        after.parse_error_answers - before.parse_error_answers,
        after.parse_batch_subrequests - before.parse_batch_subrequests,
        after.temporal_calls - before.temporal_calls,
        after.temporal_persistence - before.temporal_persistence,
        after.temporal_workflows_closed - before.temporal_workflows_closed,
    )


@dataclass(frozen=True)
class Settled(Generic[Mark]):
    counts: ServerCounts  # the counters once settled (or as they last stood, when they did not settle)
    settled: bool  # False: ``max_s`` ran out first (awaited closes not all counted, or the work still moving)
    # What ``mark()`` returned right after the reading the settled counts were already at (the first
    # reading with every awaited workflow counted closed and the work as it stayed): a measurement that
    # marks its CPU there covers the same span as the counts, without the quiet seconds that confirm them.
    mark: Mark


async def read_settled(
    http: httpx.AsyncClient,
    settings: Settings,
    *,
    mark: Callable[[], Mark],
    quiet_s: float = SETTLE_QUIET_S,
    max_s: float = SETTLE_MAX_S,
    unless_equal_to: ServerCounts | None = None,
    closed_at_least: int = 0,
) -> Settled[Mark]:
    """The counters once ``closed_at_least`` workflows have closed (as counted since the server started)
    and the work counted has stopped moving for ``quiet_s``; at most ``max_s`` (then ``settled`` is False).

    A batch's last calls (the workflow's final task) land after the client saw it finish, and the
    Temporal dev server publishes its counters up to about a second late: the closes say that the
    batches' workflows are all in, the quiet that nothing else still is. With ``unless_equal_to`` (the
    previous settled reading), a reading whose work has not moved since is taken at once. ``mark`` is
    called right after every reading; the one kept is that of the reading the quiet began at.
    """
    started = time.monotonic()
    last = await read(http, settings)
    last_mark = mark()
    if unless_equal_to is not None and last.work == unless_equal_to.work:
        return Settled(last, True, last_mark)
    # The reading the quiet began at: every awaited close counted, and the work as it has stayed since.
    quiet: tuple[ServerCounts, Mark, float] | None = None
    while True:
        if last.temporal_workflows_closed < closed_at_least:
            quiet = None
        elif quiet is None or last.work != quiet[0].work:
            quiet = (last, last_mark, time.monotonic())
        elif time.monotonic() - quiet[2] >= quiet_s:
            return Settled(last, True, quiet[1])
        if time.monotonic() - started >= max_s:
            return Settled(last, False, last_mark)
        await asyncio.sleep(SETTLE_POLL_S)
        last = await read(http, settings)
        last_mark = mark()
