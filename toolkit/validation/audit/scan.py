"""What one workflow history holds: its largest payload of each kind, its largest request, and what external
storage would move out of it. Read event by event, so a history is never held whole.

Sizes are serialized protobuf sizes, as the server checks them: a ``Payloads`` set (an input, a result) for
the blob limit; a whole ``Memo`` or ``Failure``; the events one request adds for the gRPC limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, field

from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent

__all__ = ["PAYLOAD_KINDS", "PARSE_FILES_CLAIM_BYTES", "HistoryScan", "scan_history"]

PAYLOAD_KINDS = (
    "workflow_input",
    "workflow_result",
    "activity_input",
    "activity_result",
    "signal",
    "memo",
    "failure",
)
# The history keeps this claim in place of each payload the toolkit's Parse Files driver stores (measured:
# README, "Temporal external storage"). Another driver's claim differs by a few bytes.
PARSE_FILES_CLAIM_BYTES = 237


@dataclass
class HistoryScan:
    workflow_id: str
    run_id: str
    history_bytes: int  # the server's own figure, from the listing (a few bytes more than the events' sum)
    events: int = 0
    largest: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PAYLOAD_KINDS, 0))
    largest_activity: dict[str, str] = field(default_factory=dict)  # kind → activity type of the largest
    largest_request: int = 0
    payloads: int = 0  # single payloads seen (each one external storage could move)
    movable_payloads: int = 0  # of those, at least the threshold
    movable_bytes: int = 0  # history bytes external storage at the threshold would move out (minus claims)

    @property
    def history_after_storage(self) -> int:
        """The history with every payload of at least the threshold replaced by a claim."""
        return self.history_bytes - self.movable_bytes

    def _kind(self, kind: str, size: int, activity_type: str = "") -> None:
        if size > self.largest[kind]:
            self.largest[kind] = size
            if activity_type:
                self.largest_activity[kind] = activity_type


def _failure_payloads(failure: Failure) -> Iterable[Payload]:
    """The payloads inside a failure and its causes (details, heartbeat details, encoded attributes)."""
    current = failure
    while True:
        if current.HasField("encoded_attributes"):
            yield current.encoded_attributes
        for details in (
            current.application_failure_info.details,
            current.timeout_failure_info.last_heartbeat_details,
            current.canceled_failure_info.details,
        ):
            yield from details.payloads
        if not current.HasField("cause"):
            return
        current = current.cause


# Events whose attributes name the workflow task whose completion (one gRPC request) added them.
def _completed_by(event: HistoryEvent) -> int | None:
    name = event.WhichOneof("attributes")
    if name is None:
        return None
    attributes = getattr(event, name)
    if "workflow_task_completed_event_id" not in attributes.DESCRIPTOR.fields_by_name:
        return None
    return attributes.workflow_task_completed_event_id or None


class _Scanner:
    def __init__(self, scan: HistoryScan, threshold: int, claim_bytes: int) -> None:
        self.scan = scan
        self.threshold = threshold
        self.claim_bytes = claim_bytes
        self.activity_types: dict[int, str] = {}  # scheduled event id → activity type
        self.request_bytes: dict[int, int] = {}  # workflow task completed event id → bytes its request added

    def payloads(self, kind: str, payloads: Payloads, activity_type: str = "") -> None:
        self.scan._kind(kind, payloads.ByteSize(), activity_type)
        self.singles(payloads.payloads)

    def singles(self, payloads: Iterable[Payload]) -> None:
        for payload in payloads:
            size = payload.ByteSize()
            self.scan.payloads += 1
            if size >= self.threshold:
                self.scan.movable_payloads += 1
                self.scan.movable_bytes += max(0, size - self.claim_bytes)

    def event(self, event: HistoryEvent) -> None:
        size = event.ByteSize()
        self.scan.events += 1
        task = _completed_by(event)
        if task is not None:
            self.request_bytes[task] = self.request_bytes.get(task, 0) + size
            self.scan.largest_request = max(self.scan.largest_request, self.request_bytes[task])
        else:
            # Started, signalled, an activity's completion: each came in one request of its own.
            self.scan.largest_request = max(self.scan.largest_request, size)
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started = event.workflow_execution_started_event_attributes
            self.payloads("workflow_input", started.input)
            self.scan._kind("memo", started.memo.ByteSize())
            self.singles(started.memo.fields.values())
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            self.payloads("workflow_result", event.workflow_execution_completed_event_attributes.result)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = event.activity_task_scheduled_event_attributes
            self.activity_types[event.event_id] = scheduled.activity_type.name
            self.payloads("activity_input", scheduled.input, scheduled.activity_type.name)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed = event.activity_task_completed_event_attributes
            activity_type = self.activity_types.get(completed.scheduled_event_id, "")
            self.payloads("activity_result", completed.result, activity_type)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            self.payloads("signal", event.workflow_execution_signaled_event_attributes.input)
        else:
            failure = _failure_of(event)
            if failure is not None:
                activity_type = self.activity_types.get(_scheduled_id(event), "")
                self.scan._kind("failure", failure.ByteSize(), activity_type)
                self.singles(_failure_payloads(failure))


def _failure_of(event: HistoryEvent) -> Failure | None:
    name = event.WhichOneof("attributes")
    if name is None:
        return None
    attributes = getattr(event, name)
    if "failure" in attributes.DESCRIPTOR.fields_by_name and attributes.HasField("failure"):
        return attributes.failure
    return None


def _scheduled_id(event: HistoryEvent) -> int:
    name = event.WhichOneof("attributes")
    attributes = getattr(event, name) if name else None
    if attributes is not None and "scheduled_event_id" in attributes.DESCRIPTOR.fields_by_name:
        return attributes.scheduled_event_id
    return 0


async def scan_history(
    workflow_id: str,
    run_id: str,
    history_bytes: int,
    events: AsyncIterable[HistoryEvent],
    *,
    threshold: int,
    claim_bytes: int = PARSE_FILES_CLAIM_BYTES,
) -> HistoryScan:
    """Scan ``events`` (one page at a time, as the client pages them) of one run."""
    scan = HistoryScan(workflow_id, run_id, history_bytes)
    scanner = _Scanner(scan, threshold, claim_bytes)
    async for event in events:
        scanner.event(event)
    return scan
