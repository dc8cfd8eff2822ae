"""Outages outlasted and slow downloads survived (issue 17), on a real worker, Temporal and Parse.

The worker's Parse traffic, file downloads included, goes through a TCP proxy
(``toolkit/testing/tcp_proxy.py``) that the test takes down (an outage: connections cut and refused)
or throttles (a slow download). Temporal's retry policy is the give-up budget for real failures: an
outage must not spend it, so every activity here must complete on its first attempt, and only an
outage longer than ``OUTAGE_RETRY_S`` may end a batch, with a status that says so.

Full-length form (Parse down for more than 10 minutes mid-batch, the fault suite's own stack):
``FAULT_SOAK_TRIALS=1 pytest tests/faults -k soak -s`` (README, "Fault suite").
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from tests.fixtures.worker_process import wait_until
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.memory_writer import MEMORY_CLASS, count_memories
from toolkit.parse.models import MemoryItem
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.activities import BatchActivities
from toolkit.temporal.batch_types import BatchSummary, ChunkedFinalizeInput
from toolkit.temporal.starter import start_batch_workflow_with_reference
from toolkit.temporal.worker import build_worker
from toolkit.temporal.workflows import HEARTBEAT_TIMEOUT
from toolkit.testing.tcp_proxy import TcpProxy
from toolkit.validation.workloads import synthetic_memories


@pytest.fixture
async def proxied_parse(settings: Settings, parse_proxy: TcpProxy) -> AsyncIterator[ParseClient]:
    """The worker's Parse client: every request, file downloads included, through the proxy."""
    async with ParseClient(settings, transport=parse_proxy.transport()) as client:
        yield client


async def store_batch(
    parse: ParseClient, settings: Settings, user: ParseUser, memories: Sequence[dict[str, Any]]
) -> tuple[str, str]:
    """Store ``memories`` as the API would with ``settings``' chunk size; (request id, batch id)."""
    batch_id = uuid.uuid4().hex
    items = [MemoryItem.model_validate(m) for m in memories]
    submission = store.Submission(user.object_id)
    if len(items) <= settings.batch_chunk_memories:
        request_id = await store.create_batch_memory_request_in_parse(
            parse, settings, batch_id=batch_id, submission=submission, memories=items
        )
        return request_id, batch_id
    writer = store.ChunkedBatchWriter(parse, settings, batch_id)
    for item in items:
        await writer.add(item.model_dump(mode="json"))
    chunks = await writer.finish()
    request_id = await store.create_chunked_batch_memory_request(
        parse, settings, batch_id=batch_id, submission=submission, chunks=chunks
    )
    return request_id, batch_id


async def start(
    temporal: Client, parse: ParseClient, settings: Settings, batch: tuple[str, str]
) -> WorkflowHandle[Any, BatchSummary]:
    """Start the stored batch ``(request id, batch id)`` on ``settings``' task queue."""
    request_id, batch_id = batch
    workflow_id = await start_batch_workflow_with_reference(
        temporal, parse, settings, request_id=request_id, batch_id=batch_id
    )
    return temporal.get_workflow_handle(workflow_id, result_type=BatchSummary)


async def activity_runs(handle: WorkflowHandle[Any, Any]) -> list[dict[str, Any]]:
    """Each activity of the run: type, the attempt it completed or failed on, its timeouts and times."""
    events = (await handle.fetch_history()).events
    scheduled = {e.event_id: e for e in events if e.HasField("activity_task_scheduled_event_attributes")}
    started = {e.event_id: e for e in events if e.HasField("activity_task_started_event_attributes")}
    runs = []
    for event in events:
        for kind in ("completed", "failed"):
            field = f"activity_task_{kind}_event_attributes"
            if not event.HasField(field):
                continue
            attributes = getattr(event, field)
            start = started[attributes.started_event_id]
            schedule = scheduled[attributes.scheduled_event_id]
            options = schedule.activity_task_scheduled_event_attributes
            runs.append(
                {
                    "type": options.activity_type.name,
                    "outcome": kind,
                    "attempt": start.activity_task_started_event_attributes.attempt,
                    "heartbeat_timeout_s": options.heartbeat_timeout.ToTimedelta().total_seconds(),
                    "scheduled": schedule.event_time.ToDatetime(),
                    "started": start.event_time.ToDatetime(),
                    "ended": event.event_time.ToDatetime(),
                }
            )
    return runs


async def assert_exactly_written(parse: ParseClient, settings: Settings, request_id: str, total: int) -> None:
    """The batch is ``completed`` with exact counters and every index written once."""
    request = await store.fetch_batch_memory_request_from_parse(
        parse, settings, request_id, with_memories=False
    )
    assert request is not None
    assert (request.status, request.processed_count, request.success_count, request.fail_count) == (
        "completed",
        total,
        total,
        0,
    )
    assert request.error_count == 0
    rows = await parse.find(
        MEMORY_CLASS, {"batchId": request.batch_id}, keys="index", limit=total + 100, master=True
    )
    assert sorted(row["index"] for row in rows) == list(range(total)), "memories lost or duplicated"


async def result_within(handle: WorkflowHandle[Any, BatchSummary], timeout_s: float) -> BatchSummary:
    """The run's result; past ``timeout_s``, a failure naming the activities that were being retried."""
    try:
        return await asyncio.wait_for(handle.result(), timeout_s)
    except TimeoutError:
        pending = (await handle.describe()).raw_description.pending_activities
        retried = [
            (p.activity_type.name, p.attempt, p.last_failure.message) for p in pending if p.attempt > 1
        ]
        raise AssertionError(f"not finished after {timeout_s:.0f} s; retried activities: {retried}") from None


# ---- a Parse outage in the middle of a chunked batch ------------------------------------------------

CHUNK = 200
CHUNKS = 3
OUTAGE_S = 25.0


@pytest.mark.timeout(300)
async def test_a_parse_outage_mid_chunked_batch_spends_no_retry_and_loses_nothing(
    temporal: Client,
    parse: ParseClient,
    proxied_parse: ParseClient,
    parse_proxy: TcpProxy,
    worker_settings: Settings,
    user: ParseUser,
) -> None:
    # Serial writes of 10 memories: the batch is still running when Parse goes away.
    settings = dataclasses.replace(
        worker_settings, batch_chunk_memories=CHUNK, writer_batch_size=10, writer_concurrency=1
    )
    total = CHUNK * CHUNKS
    request_id, batch_id = await store_batch(
        parse, settings, user, synthetic_memories(total, content_bytes=200)
    )
    async with build_worker(temporal, settings, proxied_parse):
        handle = await start(temporal, parse, settings, (request_id, batch_id))

        async def writing() -> bool:
            return await count_memories(parse, batch_id) > 0

        await wait_until(writing, 120, "the chunks to start writing")
        parse_proxy.set_mode("down")
        written_at_outage = await count_memories(parse, batch_id)
        await asyncio.sleep(OUTAGE_S)
        parse_proxy.set_mode("forward")
        summary = await result_within(handle, 240)

    assert 0 < written_at_outage < total, "the outage must land in the middle of the batch"
    assert (summary.status, summary.total, summary.successful, summary.failed) == (
        "completed",
        total,
        total,
        0,
    )
    await assert_exactly_written(parse, settings, request_id, total)
    runs = await activity_runs(handle)
    assert sorted(r["type"] for r in runs) == sorted(
        ["fetch_and_process_batch_memories", "finalize_chunked_batch"] + ["process_batch_chunk"] * CHUNKS
    )
    # The outage spent none of Temporal's retries: each activity waited it out on its first attempt.
    assert [(r["type"], r["attempt"]) for r in runs if r["attempt"] != 1] == []
    await store.delete_batch_request(parse, request_id)


# ---- an outage during finalize ---------------------------------------------------------------------


class _CutParseAtFinalize(BatchActivities):
    """The real activities; the first finalize takes the proxy down as it starts, for ``outage_s``."""

    def __init__(self, settings: Settings, parse: ParseClient, proxy: TcpProxy, outage_s: float) -> None:
        super().__init__(settings, parse)
        self._proxy = proxy
        self._outage_s = outage_s
        self.cut = False

    @activity.defn(name="finalize_chunked_batch")
    async def finalize_chunked_batch(self, data: ChunkedFinalizeInput) -> BatchSummary:
        if not self.cut:
            self.cut = True
            self._proxy.set_mode("down")
            asyncio.get_running_loop().call_later(self._outage_s, self._proxy.set_mode, "forward")
        return await super().finalize_chunked_batch(data)


@pytest.mark.timeout(240)
async def test_an_outage_during_finalize_is_waited_out_with_a_heartbeat(
    temporal: Client,
    parse: ParseClient,
    proxied_parse: ParseClient,
    parse_proxy: TcpProxy,
    worker_settings: Settings,
    user: ParseUser,
) -> None:
    settings = dataclasses.replace(worker_settings, batch_chunk_memories=50)
    request_id, batch_id = await store_batch(
        parse, settings, user, synthetic_memories(150, content_bytes=100)
    )
    activities = _CutParseAtFinalize(settings, proxied_parse, parse_proxy, outage_s=15.0)
    async with build_worker(temporal, settings, proxied_parse, activities=activities):
        handle = await start(temporal, parse, settings, (request_id, batch_id))
        summary = await result_within(handle, 180)

    assert activities.cut, "the outage must have started inside finalize"
    assert (summary.status, summary.successful, summary.failed) == ("completed", 150, 0)
    await assert_exactly_written(parse, settings, request_id, 150)
    [finalize] = [r for r in await activity_runs(handle) if r["type"] == "finalize_chunked_batch"]
    assert (finalize["outcome"], finalize["attempt"]) == ("completed", 1), finalize
    assert (finalize["ended"] - finalize["started"]).total_seconds() >= 14, "finalize waited out the outage"
    # A heartbeat, so a long outage is waited out past the step's old 2-minute limit.
    assert finalize["heartbeat_timeout_s"] == HEARTBEAT_TIMEOUT.total_seconds()
    await store.delete_batch_request(parse, request_id)


# ---- an outage longer than OUTAGE_RETRY_S -----------------------------------------------------------


@pytest.mark.timeout(180)
async def test_an_outage_past_the_configured_limit_fails_the_batch_saying_so(
    temporal: Client,
    parse: ParseClient,
    proxied_parse: ParseClient,
    parse_proxy: TcpProxy,
    worker_settings: Settings,
    user: ParseUser,
) -> None:
    limit_s = 4.0
    settings = dataclasses.replace(worker_settings, outage_retry_s=limit_s)
    request_id, batch_id = await store_batch(parse, settings, user, synthetic_memories(20, content_bytes=100))
    parse_proxy.set_mode("down")
    async with build_worker(temporal, settings, proxied_parse):
        handle = await start(temporal, parse, settings, (request_id, batch_id))

        async def gave_up() -> bool:
            return any(r["outcome"] == "failed" for r in await activity_runs(handle))

        await wait_until(gave_up, 60, "the activity to give up")
        # Marking the batch failed needs Parse: it waits for Parse, however long it takes.
        await asyncio.sleep(3)
        parse_proxy.set_mode("forward")
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(handle.result(), 120)

    [process] = [r for r in await activity_runs(handle) if r["type"] == "fetch_and_process_batch_memories"]
    assert (process["outcome"], process["attempt"]) == ("failed", 1)
    assert (process["ended"] - process["started"]).total_seconds() >= limit_s, "not before the limit"
    request = await store.fetch_batch_memory_request_from_parse(
        parse, settings, request_id, with_memories=False
    )
    assert request is not None and request.status == "failed"
    [error] = await store.find_batch_errors(parse, batch_id, offset=0, limit=10)
    assert error.index == -1
    assert error.error == (
        "ParseUnavailableTooLong: the batch store stayed unavailable past the outage retry limit "
        "(OUTAGE_RETRY_S)"
    )
    assert await count_memories(parse, batch_id) == 0
    await store.delete_batch_request(parse, request_id)


# ---- downloads slower than the heartbeat timeout ---------------------------------------------------

# What the throttled proxy sends back, per connection: a file of ~1 MB takes ~25 s.
REPLY_BYTES_PER_S = 40_000
SLOW_CONTENT_BYTES = 12_000
SLOW_MEMORIES = 140


@pytest.mark.timeout(400)
async def test_downloads_slower_than_the_heartbeat_timeout_finish_on_their_first_attempt(
    temporal: Client,
    parse: ParseClient,
    proxied_parse: ParseClient,
    parse_proxy: TcpProxy,
    worker_settings: Settings,
    user: ParseUser,
) -> None:
    settings = dataclasses.replace(worker_settings, batch_chunk_memories=SLOW_MEMORIES)
    # One batch of one file, and one of two chunk files; each file is about the same size.
    one_file = await store_batch(
        parse, settings, user, synthetic_memories(SLOW_MEMORIES, content_bytes=SLOW_CONTENT_BYTES, seed=1)
    )
    chunked = await store_batch(
        parse, settings, user, synthetic_memories(2 * SLOW_MEMORIES, content_bytes=SLOW_CONTENT_BYTES, seed=2)
    )
    for request_id, _ in (one_file, chunked):
        request = await store.fetch_batch_memory_request_from_parse(
            parse, settings, request_id, with_memories=False
        )
        assert request is not None and request.batch_metadata is not None
        per_file = request.batch_metadata.compressed_size_bytes / request.batch_metadata.total_chunks
        # The premise: each file takes longer to download than the heartbeat timeout.
        assert per_file / REPLY_BYTES_PER_S > HEARTBEAT_TIMEOUT.total_seconds() + 3, per_file
    parse_proxy.throttle_replies(REPLY_BYTES_PER_S)
    async with build_worker(temporal, settings, proxied_parse):
        handles = [await start(temporal, parse, settings, batch) for batch in (one_file, chunked)]
        started = time.monotonic()
        summaries = [await result_within(handle, 300) for handle in handles]
    print(f"\nboth batches done in {time.monotonic() - started:.0f} s through the throttled proxy")

    for summary, total in zip(summaries, (SLOW_MEMORIES, 2 * SLOW_MEMORIES), strict=True):
        assert (summary.status, summary.total, summary.successful) == ("completed", total, total)
    for (request_id, _), total in zip((one_file, chunked), (SLOW_MEMORIES, 2 * SLOW_MEMORIES), strict=True):
        await assert_exactly_written(parse, settings, request_id, total)
    for handle in handles:
        runs = await activity_runs(handle)
        assert [(r["type"], r["attempt"]) for r in runs if r["attempt"] != 1] == [], "a heartbeat timed out"
        downloading = [
            r for r in runs if r["type"] in ("fetch_and_process_batch_memories", "process_batch_chunk")
        ]
        slowest = max((r["ended"] - r["started"]).total_seconds() for r in downloading)
        assert slowest > HEARTBEAT_TIMEOUT.total_seconds(), (
            f"no activity outlasted the heartbeat timeout: {slowest}"
        )
    for request_id, _ in (one_file, chunked):
        await store.delete_batch_request(parse, request_id)
