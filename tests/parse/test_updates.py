"""Progress, errors, status and completion writes: atomic under concurrency, exact on the real server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from toolkit.parse import ObjectNotFound, ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.models import BatchError, BatchMemoryRequest
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings

CreateBatch = Callable[..., Awaitable[str]]


async def _fetch(parse: ParseClient, settings: Settings, request_id: str) -> BatchMemoryRequest:
    request = await store.fetch_batch_memory_request_from_parse(
        parse, settings, request_id, with_memories=False
    )
    assert request is not None
    return request


async def test_100_concurrent_increments_sum_exactly(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    request_id = await create_batch()

    async def one(i: int) -> None:
        ok = i % 4 != 0
        await store.update_batch_request_progress(
            parse, request_id, processed=1, successful=int(ok), failed=int(not ok)
        )

    await asyncio.gather(*(asyncio.create_task(one(i)) for i in range(100)))

    request = await _fetch(parse, settings, request_id)
    assert (request.processed_count, request.success_count, request.fail_count) == (100, 75, 25)


async def test_50_concurrent_appends_record_each_memory_once_sorted_on_read(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    request_id = await create_batch()
    # One shared timestamp and text for all: only the index tells the entries apart, and two of them
    # repeat memory 7 (a retried activity): one error per memory, counted once.
    at = datetime.now(UTC)
    indexes = [*range(48), 7, 7]

    async def one(index: int) -> None:
        await store.append_batch_request_errors(
            parse, request_id, [BatchError(index=index, error="processor failed", timestamp=at)]
        )

    await asyncio.gather(*(asyncio.create_task(one(i)) for i in reversed(indexes)))

    request = await _fetch(parse, settings, request_id)
    assert request.error_count == 48
    assert [e.index for e in request.errors] == list(range(48))
    assert all(
        e.error == "processor failed" and e.timestamp == request.errors[0].timestamp for e in request.errors
    )


async def test_errors_are_capped_one_per_memory_and_sorted_by_index(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    request_id = await create_batch()
    t0 = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    await store.append_batch_request_errors(
        parse,
        request_id,
        [
            BatchError(index=3, error="later", timestamp=t0 + timedelta(seconds=1)),
            BatchError(index=3, error="earlier", timestamp=t0),
            BatchError(index=4, error="x" * 5_000, timestamp=t0),
            BatchError(index=-1, error="whole batch", timestamp=t0),
        ],
    )
    await store.append_batch_request_errors(parse, request_id, [])  # a no-op, not an error

    request = await _fetch(parse, settings, request_id)
    # Memory 3 reported twice in one call: the newer report is the one kept.
    assert [(e.index, e.error[:11], e.timestamp) for e in request.errors] == [
        (-1, "whole batch", t0),
        (3, "later", t0 + timedelta(seconds=1)),
        (4, "x" * 11, t0),
    ]
    assert len(request.errors[2].error) == store.MAX_ERROR_CHARS
    assert request.error_count == 3


async def test_absolute_progress_is_idempotent(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    request_id = await create_batch()
    for _ in range(2):  # a retried write
        await store.set_batch_request_progress(parse, request_id, processed=30, successful=28, failed=2)
    request = await _fetch(parse, settings, request_id)
    assert (request.processed_count, request.success_count, request.fail_count) == (30, 28, 2)


async def test_status_workflow_completion_and_webhook_fields(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    request_id = await create_batch(webhook_url="https://example.com/h")
    started = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    await store.record_workflow(parse, request_id, "batch-abc", "run-123")
    await store.update_batch_request_status(parse, request_id, "processing", extra={"startedAt": started})

    request = await _fetch(parse, settings, request_id)
    assert (request.status, request.workflow_id, request.workflow_run_id) == (
        "processing",
        "batch-abc",
        "run-123",
    )
    assert request.started_at == started.replace(microsecond=123000)
    raw = await parse.get_object("BatchMemoryRequest", request_id, master=True)
    assert raw["startedAt"] == {"__type": "Date", "iso": "2024-05-01T12:00:00.123Z"}

    completed = started + timedelta(seconds=5)
    await store.update_batch_request_completion(
        parse,
        request_id,
        status="partial",
        completed_at=completed,
        processing_duration_ms=5000,
        processed=4,
        successful=3,
        failed=1,
    )
    await store.mark_webhook_sent(parse, request_id)

    request = await _fetch(parse, settings, request_id)
    assert request.status == "partial"
    assert request.completed_at == completed.replace(microsecond=123000)
    assert request.processing_duration_ms == 5000
    assert (request.processed_count, request.success_count, request.fail_count) == (4, 3, 1)
    assert request.webhook_sent is True

    # Without counters, completion leaves them as they are.
    await store.update_batch_request_completion(
        parse, request_id, status="failed", completed_at=completed, processing_duration_ms=0
    )
    request = await _fetch(parse, settings, request_id)
    assert (request.status, request.processed_count, request.success_count) == ("failed", 4, 3)


async def test_unknown_status_and_unsafe_ids_are_refused(
    parse: ParseClient, create_batch: CreateBatch
) -> None:
    request_id = await create_batch()
    with pytest.raises(ValueError):
        await store.update_batch_request_status(parse, request_id, "done")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await store.mark_webhook_sent(parse, "../users/x")
    with pytest.raises(ObjectNotFound):
        await store.mark_webhook_sent(parse, "noSuchRequest1")


async def test_find_by_idempotency_key_is_per_user(
    parse: ParseClient, user: ParseUser, other_user: ParseUser, create_batch: CreateBatch, unique: str
) -> None:
    key = f"idem-{unique}"
    request_id = await create_batch(idempotency_key=key)

    found = await store.find_by_idempotency_key(parse, user.object_id, key)
    assert found is not None and found.object_id == request_id and found.idempotency_key == key
    assert await store.find_by_idempotency_key(parse, other_user.object_id, key) is None
    assert await store.find_by_idempotency_key(parse, user.object_id, key + "-other") is None


async def test_find_batch_request_by_batch_id(
    parse: ParseClient, user: ParseUser, create_batch: CreateBatch, unique: str
) -> None:
    request_id = await create_batch(batch_id=f"find{unique}")
    found = await store.find_batch_request(parse, f"find{unique}")
    assert found is not None and found.object_id == request_id and found.memories is None
    assert await store.find_batch_request(parse, f"nosuch{unique}") is None
    assert await store.find_batch_request(parse, f"nosuch{unique}", session_token=user.session_token) is None


async def test_delete_batch_file_and_request(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    request_id = await create_batch()
    request = await _fetch(parse, settings, request_id)
    assert request.batch_data_file is not None and request.batch_data_file.url
    url = request.batch_data_file.url

    assert await store.delete_batch_file(parse, request_id) is True
    with pytest.raises(ObjectNotFound):
        await parse.download(url)
    request = await _fetch(parse, settings, request_id)
    assert request.batch_data_file is None
    assert await store.delete_batch_file(parse, request_id) is False  # nothing left to delete

    second = await create_batch()
    file = (await _fetch(parse, settings, second)).batch_data_file
    assert file is not None and file.url
    await store.delete_batch_request(parse, second)
    assert await store.fetch_batch_memory_request_from_parse(parse, settings, second) is None
    with pytest.raises(ObjectNotFound):
        await parse.download(file.url)
    await store.delete_batch_request(parse, second)  # already gone: not an error
    assert await store.delete_batch_file(parse, second) is False


async def test_a_file_deleted_twice_counts_as_gone(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    # A retried DELETE repeats one that worked; the fs adapter then answers error 153 (ENOENT).
    request_id = await create_batch()
    file = (await _fetch(parse, settings, request_id)).batch_data_file
    assert file is not None
    assert await store.delete_file_if_present(parse, file) is True
    assert await store.delete_file_if_present(parse, file) is False
