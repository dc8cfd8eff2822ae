"""Per-memory errors: the request stores a bounded sample, an exact count, and one object per failed memory.

Before: every error was appended to the request's ``errors`` array, which grew without bound and was
read whole on every status poll. Real Parse Server throughout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from toolkit.parse import ParseClient, PermissionDenied
from toolkit.parse import batch_requests as store
from toolkit.parse.models import BatchError, error_object_id
from toolkit.parse.schema import BATCH_MEMORY_ERROR
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings

CreateBatch = Callable[..., Awaitable[str]]

FAILED = 250  # > MAX_STORED_ERRORS, and five writer chunks of 50


def _errors(indexes: range | list[int], text: str, at: datetime) -> list[BatchError]:
    return [BatchError(index=i, error=f"{text} {i}", timestamp=at) for i in indexes]


async def _error_rows(parse: ParseClient, batch_id: str) -> list[dict]:
    rows: list[dict] = []
    while batch := await parse.find(
        BATCH_MEMORY_ERROR, {"batchId": batch_id}, limit=100, skip=len(rows), order="index", master=True
    ):
        rows += batch
    return rows


async def test_errors_are_bounded_on_the_request_counted_exactly_and_kept_per_memory(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch, user: ParseUser
) -> None:
    request_id = await create_batch()
    now = datetime.now(UTC)
    for start in range(0, FAILED, 50):  # as the worker records them: one call per written chunk
        await store.append_batch_request_errors(
            parse, request_id, _errors(range(start, start + 50), "write failed", now)
        )
    # A retried activity reports 30 of them again, with newer text: still one per memory.
    later = now + timedelta(seconds=5)
    await store.append_batch_request_errors(parse, request_id, _errors(range(100, 130), "again", later))

    request = await store.fetch_batch_memory_request_from_parse(
        parse, settings, request_id, with_memories=False
    )
    assert request is not None
    assert request.error_count == FAILED
    assert len(request.errors) == store.MAX_STORED_ERRORS
    assert [e.index for e in request.errors] == list(range(store.MAX_STORED_ERRORS))

    rows = await _error_rows(parse, request.batch_id)
    assert [r["index"] for r in rows] == list(range(FAILED))
    assert [r["objectId"] for r in rows] == [error_object_id(request.batch_id, i) for i in range(FAILED)]
    assert rows[100]["error"] == "again 100" and rows[130]["error"] == "write failed 130"
    acl = (await parse.get_object("BatchMemoryRequest", request_id, master=True))["ACL"]
    assert all(r["ACL"] == acl for r in rows)


async def test_concurrent_reports_of_the_same_errors_count_each_memory_once(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    request_id = await create_batch()
    now = datetime.now(UTC)
    await asyncio.gather(
        *(
            store.append_batch_request_errors(parse, request_id, _errors(range(20), "x", now))
            for _ in range(4)
        )
    )
    request = await store.fetch_batch_memory_request_from_parse(
        parse, settings, request_id, with_memories=False
    )
    assert request is not None and request.error_count == 20 and len(request.errors) == 20
    assert len(await _error_rows(parse, request.batch_id)) == 20


async def test_error_objects_are_private_and_read_only_for_clients(
    parse: ParseClient,
    settings: Settings,
    create_batch: CreateBatch,
    user: ParseUser,
    other_user: ParseUser,
) -> None:
    request_id = await create_batch()
    await store.append_batch_request_errors(
        parse, request_id, [BatchError(index=3, error="boom", timestamp=datetime.now(UTC))]
    )
    request = await store.fetch_batch_memory_request_from_parse(
        parse, settings, request_id, with_memories=False
    )
    assert request is not None
    own = await store.find_batch_errors(parse, request.batch_id, session_token=user.session_token)
    assert [(e.index, e.error) for e in own] == [(3, "boom")]
    assert (
        await store.find_batch_errors(parse, request.batch_id, session_token=other_user.session_token) == []
    )
    with pytest.raises(PermissionDenied):  # a client may not forge (or rewrite) an error
        await parse.create_object(
            BATCH_MEMORY_ERROR, {"batchId": request.batch_id, "index": 4}, session_token=user.session_token
        )


async def test_deleting_a_request_deletes_its_errors(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    request_id = await create_batch()
    await store.append_batch_request_errors(parse, request_id, _errors(range(60), "gone", datetime.now(UTC)))
    request = await store.fetch_batch_memory_request_from_parse(
        parse, settings, request_id, with_memories=False
    )
    assert request is not None and len(await _error_rows(parse, request.batch_id)) == 60
    await store.delete_batch_request(parse, request_id)
    assert await _error_rows(parse, request.batch_id) == []


async def test_no_error_text_stores_an_address(parse: ParseClient, create_batch: CreateBatch) -> None:
    """The last net under every producer of error texts: what the owner reads names no server."""
    request_id = await create_batch()
    batch_id = (await parse.get_object("BatchMemoryRequest", request_id, master=True))["batchId"]
    now = datetime.now(UTC)
    texts = {
        0: "ParseUnavailable: Parse Server at http://10.0.0.7:1337/parse unreachable",
        1: "upstream parse.internal.example:443 refused",
        2: "db 192.168.1.20 down; retry [fd00::1]:5432",
        3: "Parse error 121: Invalid field name: a.b.",
    }
    await store.append_batch_request_errors(
        parse, request_id, [BatchError(index=i, error=text, timestamp=now) for i, text in texts.items()]
    )
    stored = {row["index"]: row["error"] for row in await _error_rows(parse, batch_id)}
    assert stored == {
        0: "ParseUnavailable: Parse Server at <address> unreachable",
        1: "upstream <address> refused",
        2: "db <address> down; retry <address>",
        3: "Parse error 121: Invalid field name: a.b.",
    }
    request = await store.find_batch_request(parse, batch_id)
    assert request is not None and {e.index: e.error for e in request.errors} == stored
