"""Reading a namespace for the audit, read-only and bounded.

1. **List** the runs started in the window through visibility. A closed run's listing carries its history
   size and length; a running one's does not (visibility fills them in at close), so each running run is
   described, up to ``max_described``.
2. **Fetch** the histories of the ``top_n`` largest runs of each workflow type (by history bytes), page by
   page, scanning each as it arrives (:mod:`toolkit.validation.audit.scan`). Nothing else is fetched: a
   namespace of a million runs costs its listing and ``top_n`` histories per type.

Progress goes to an optional callback ``(stage, done, total)``; the command line and the notebook show it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from toolkit.settings import Settings
from toolkit.validation.audit.connection import BadAuditRequest, explain_rpc_error
from toolkit.validation.audit.scan import PARSE_FILES_CLAIM_BYTES, HistoryScan, scan_history

__all__ = ["AuditData", "AuditWindow", "ListedRun", "Progress", "collect"]

Progress = Callable[[str, int, int | None], None]
MAX_TOP_N = 1_000
_LIST_PAGE = 1_000
_HISTORY_PAGE = 500


@dataclass(frozen=True)
class AuditWindow:
    """Runs started in ``[start, end)``, optionally narrowed by a visibility filter (``TaskQueue = "x"``)."""

    start: datetime
    end: datetime
    query: str = ""

    def __post_init__(self) -> None:
        for moment in (self.start, self.end):
            if moment.tzinfo is None:
                raise BadAuditRequest(f"window bounds need a time zone: {moment.isoformat()}")
        if self.start >= self.end:
            raise BadAuditRequest(f"empty window: {self.describe()}")

    def describe(self) -> str:
        start, end = self.start.astimezone(UTC), self.end.astimezone(UTC)
        text = f"{start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S} UTC"
        return f"{text}, {self.query}" if self.query else text

    def visibility_query(self) -> str:
        def stamp(moment: datetime) -> str:
            return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        window = f'StartTime >= "{stamp(self.start)}" AND StartTime < "{stamp(self.end)}"'
        return f"{window} AND ({self.query})" if self.query else window


@dataclass(frozen=True)
class ListedRun:
    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    history_bytes: int | None  # None: running and not described (past max_described)
    history_events: int | None
    start_time: datetime | None


@dataclass
class AuditData:
    namespace: str
    target: str
    window: AuditWindow
    top_n: int
    threshold: int
    claim_bytes: int
    runs: list[ListedRun] = field(default_factory=list)
    scans: dict[str, list[HistoryScan]] = field(default_factory=dict)  # workflow type → scanned histories
    listing_truncated: bool = False  # max_listed reached: counts and percentiles cover the first runs only
    running_not_described: int = 0
    gone: int = 0  # listed runs whose history was removed before it could be read


def _size(value: int | None) -> int:
    return value if value is not None else -1


async def _list(
    client: Client, window: AuditWindow, max_listed: int, progress: Progress | None
) -> tuple[list[ListedRun], bool]:
    runs: list[ListedRun] = []
    async for execution in client.list_workflows(window.visibility_query(), page_size=_LIST_PAGE):
        if len(runs) >= max_listed:
            return runs, True
        info = execution.raw_info
        runs.append(
            ListedRun(
                workflow_id=execution.id,
                run_id=execution.run_id,
                workflow_type=execution.workflow_type,
                status=execution.status.name if execution.status else "UNKNOWN",
                history_bytes=info.history_size_bytes,
                history_events=info.history_length,
                start_time=execution.start_time,
            )
        )
        if progress and len(runs) % _LIST_PAGE == 0:
            progress("listing", len(runs), None)
    if progress:
        progress("listing", len(runs), len(runs))
    return runs, False


async def _describe_running(
    client: Client, runs: list[ListedRun], max_described: int, progress: Progress | None
) -> tuple[list[ListedRun], int]:
    running = [i for i, run in enumerate(runs) if run.status == WorkflowExecutionStatus.RUNNING.name]
    described = running[:max_described]
    for done, index in enumerate(described, start=1):
        run = runs[index]
        description = await client.get_workflow_handle(run.workflow_id, run_id=run.run_id).describe()
        info = description.raw_description.workflow_execution_info
        runs[index] = replace(run, history_bytes=info.history_size_bytes, history_events=info.history_length)
        if progress:
            progress("describing running", done, len(described))
    for index in running[max_described:]:
        runs[index] = replace(runs[index], history_bytes=None, history_events=None)
    return runs, len(running) - len(described)


def largest_per_type(runs: list[ListedRun], top_n: int) -> dict[str, list[ListedRun]]:
    """The ``top_n`` runs of each type with the largest history (bytes, then events), largest first."""
    by_type: dict[str, list[ListedRun]] = {}
    for run in runs:
        by_type.setdefault(run.workflow_type, []).append(run)
    return {
        workflow_type: sorted(
            members, key=lambda r: (_size(r.history_bytes), _size(r.history_events)), reverse=True
        )[:top_n]
        for workflow_type, members in sorted(by_type.items())
    }


async def collect(
    client: Client,
    settings: Settings,
    window: AuditWindow,
    *,
    top_n: int = 10,
    threshold: int | None = None,
    claim_bytes: int = PARSE_FILES_CLAIM_BYTES,
    max_listed: int = 50_000,
    max_described: int = 500,
    progress: Progress | None = None,
) -> AuditData:
    """List the window, describe its running runs, fetch and scan the ``top_n`` largest histories per type."""
    if not 1 <= top_n <= MAX_TOP_N:
        raise BadAuditRequest(f"top_n must be 1 to {MAX_TOP_N:,} histories per workflow type, not {top_n}")
    threshold = settings.temporal_external_storage_threshold if threshold is None else threshold
    if threshold < 1:
        raise BadAuditRequest(f"the external storage threshold must be at least 1 byte, not {threshold}")
    data = AuditData(client.namespace, settings.temporal_target, window, top_n, threshold, claim_bytes)
    refused: RPCError | None = None
    try:
        await _read(client, data, max_listed, max_described, progress)
    except RPCError as exc:
        refused = exc
    if refused is not None:
        # Raised outside the handler, as in connect_for_audit: no SDK error as its context.
        raise explain_rpc_error(refused, settings)
    return data


async def _read(
    client: Client, data: AuditData, max_listed: int, max_described: int, progress: Progress | None
) -> None:
    data.runs, data.listing_truncated = await _list(client, data.window, max_listed, progress)
    data.runs, data.running_not_described = await _describe_running(
        client, data.runs, max_described, progress
    )
    chosen = largest_per_type(data.runs, data.top_n)
    total = sum(len(members) for members in chosen.values())
    done = 0
    for workflow_type, members in chosen.items():
        scans = data.scans.setdefault(workflow_type, [])
        for run in members:
            handle = client.get_workflow_handle(run.workflow_id, run_id=run.run_id)
            events = handle.fetch_history_events(page_size=_HISTORY_PAGE)
            try:
                scan = await scan_history(
                    run.workflow_id,
                    run.run_id,
                    _size(run.history_bytes),
                    events,
                    threshold=data.threshold,
                    claim_bytes=data.claim_bytes,
                )
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                data.gone += 1  # removed by retention between the listing and the fetch
            else:
                scans.append(scan)
            done += 1
            if progress:
                progress("fetching histories", done, total)
