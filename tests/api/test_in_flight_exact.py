"""MAX_BATCHES_IN_FLIGHT is exact across API processes, streamed uploads included (issue 16).

Before, the cap was a count of the user's pending and processing requests, read before storing: two
simultaneous submits both passed it, and a streamed upload checked it when its first chunk filled but
created its request only after the last byte, so any number of uploads in progress passed a cap of 2.
Now a batch takes one of the user's numbered slots (``toolkit.parse.in_flight``) before anything is
stored, and gives it back on every ending; a slot whose holder died is repaired when the user reaches
the cap.

Real API processes on a task queue no worker polls (a started batch stays in flight), real Parse.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.fixtures.uploads import files_of, paused_body
from tests.fixtures.worker_process import wait_until
from toolkit.api.idempotency import idempotent_batch_id
from toolkit.parse import ParseClient, in_flight
from toolkit.parse import batch_requests as store
from toolkit.parse.in_flight import HOLD_STALE_AFTER_S
from toolkit.parse.models import MemoryItem, to_parse_date
from toolkit.parse.schema import BATCH_MEMORY_REQUEST, BATCH_SLOT_HOLD
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.temporal.starter import workflow_id_for
from toolkit.validation.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer, FlagSetter

CAP = 2
CHUNK = 10


@pytest.fixture(scope="module")
def unpolled_queue() -> str:
    return f"unpolled-cap-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def capped_apis(start_api: Callable[..., ApiServer], unpolled_queue: str) -> list[ApiServer]:
    """Two API processes with a cap of 2 and chunks of 10 memories, on a queue no worker polls.

    A paused upload must not meet the body idle timeout on a loaded machine: it is raised to 5 minutes.
    """
    return [
        start_api(
            MAX_BATCHES_IN_FLIGHT=str(CAP),
            TEMPORAL_TASK_QUEUE=unpolled_queue,
            BATCH_CHUNK_MEMORIES=str(CHUNK),
            BODY_IDLE_TIMEOUT_S="300",
        )
        for _ in range(2)
    ]


@pytest.fixture
async def ended(settings: Settings) -> AsyncIterator[list[str]]:
    """Batch ids whose workflows the test started: terminated at the end (nobody polls their queue)."""
    batch_ids: list[str] = []
    yield batch_ids
    temporal = await connect(settings)
    for batch_id in batch_ids:
        try:
            await temporal.get_workflow_handle(workflow_id_for(batch_id)).terminate(
                reason="test: nobody polls"
            )
        except Exception:  # noqa: BLE001 - already ended, or never started
            pass


def _auth(user: ParseUser, key: str | None = None) -> dict[str, str]:
    headers = {"X-Parse-Session-Token": user.session_token}
    return {**headers, "Idempotency-Key": key} if key else headers


async def _requests_of(parse: ParseClient, user: ParseUser) -> list[dict[str, Any]]:
    pointer = {"__type": "Pointer", "className": "_User", "objectId": user.object_id}
    return await parse.find(BATCH_MEMORY_REQUEST, {"user": pointer}, limit=100, master=True)


async def test_simultaneous_submits_to_two_api_processes_pass_the_cap_exactly(
    capped_apis: list[ApiServer],
    http: httpx.AsyncClient,
    parse: ParseClient,
    user: ParseUser,
    ended: list[str],
) -> None:
    body = {"memories": chitchat_memories(3)}
    submits = [
        http.post(f"{capped_apis[n % 2].url}/v1/memory/batch", json=body, headers=_auth(user))
        for n in range(10)
    ]
    answers = await asyncio.gather(*submits)
    ended.extend(a.json()["batch_id"] for a in answers if a.status_code == 202)

    assert sorted(a.status_code for a in answers) == [202] * CAP + [429] * (10 - CAP), [
        a.text for a in answers
    ]
    assert len(await _requests_of(parse, user)) == CAP
    assert len(await in_flight.holds_of(parse, user.object_id)) == CAP


async def test_streamed_uploads_take_a_slot_from_their_first_chunk(
    capped_apis: list[ApiServer],
    set_flags: FlagSetter,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    unique: str,
    ended: list[str],
) -> None:
    await set_flags(enabled=True, percent=100)  # chunked uploads are the reference path's
    uploads = 5
    keys = [f"upload-{unique}-{n}" for n in range(uploads)]
    sent = [asyncio.Event() for _ in range(uploads)]
    go_on = asyncio.Event()
    async with httpx.AsyncClient(timeout=120.0) as client:
        posts = [
            asyncio.create_task(
                client.post(
                    f"{capped_apis[n % 2].url}/v1/memory/batch",
                    content=paused_body(5 * CHUNK, 3 * CHUNK + 5, sent[n], go_on),
                    headers={"Content-Type": "application/json", **_auth(user, keys[n])},
                )
            )
            for n in range(uploads)
        ]
        await asyncio.gather(*(event.wait() for event in sent))

        async def two_uploads_store_chunks() -> bool:
            holds = await in_flight.holds_of(parse, user.object_id)
            assert len(holds) <= CAP, holds  # never more than the cap, at any moment
            stored = [
                b for b in (idempotent_batch_id(user.object_id, k) for k in keys) if files_of(settings, b)
            ]
            return len(holds) == CAP and len(stored) == CAP

        # Mid-body, no request exists yet; two uploads hold the slots and write their chunks.
        await wait_until(two_uploads_store_chunks, 60, "two uploads holding slots")
        assert await _requests_of(parse, user) == []
        go_on.set()
        answers = await asyncio.gather(*posts)
    ended.extend(a.json()["batch_id"] for a in answers if a.status_code == 202)

    assert sorted(a.status_code for a in answers) == [202] * CAP + [429] * (uploads - CAP), [
        a.text for a in answers
    ]
    refused = [
        idempotent_batch_id(user.object_id, k)
        for k, a in zip(keys, answers, strict=True)
        if a.status_code == 429
    ]
    assert all(files_of(settings, batch_id) == [] for batch_id in refused), "a refused upload stored nothing"
    held = await in_flight.holds_of(parse, user.object_id)
    requests = await _requests_of(parse, user)
    assert sorted(r["slotHold"] for r in requests) == sorted(h.token for h in held) and len(held) == CAP


async def test_a_refusal_after_the_slot_was_taken_gives_it_back(
    no_temporal_api: ApiServer, http: httpx.AsyncClient, parse: ParseClient, user: ParseUser
) -> None:
    """Temporal unreachable: 503 after the slot was taken and before anything was stored."""
    for _ in range(3):
        answer = await http.post(
            f"{no_temporal_api.url}/v1/memory/batch",
            json={"memories": chitchat_memories(2)},
            headers=_auth(user),
        )
        assert answer.status_code == 503, answer.text
    assert await in_flight.holds_of(parse, user.object_id) == []
    assert await _requests_of(parse, user) == []


async def _stale(parse: ParseClient, token: str) -> None:
    """Make a hold look abandoned: its holder last touched it long ago."""
    long_ago = datetime.now(UTC) - timedelta(seconds=HOLD_STALE_AFTER_S + 60)
    await parse.update_object(BATCH_SLOT_HOLD, token, {"touchedAt": to_parse_date(long_ago)}, master=True)


async def test_slots_left_by_dead_processes_are_repaired_when_the_user_reaches_the_cap(
    capped_apis: list[ApiServer],
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    unique: str,
    ended: list[str],
) -> None:
    # Three holders, one more than the cap allows (taken with a cap of 3):
    # 1. an API process died after taking a slot, before creating the request: the hold is abandoned;
    orphan_hold = await in_flight.take_slot(parse, user.object_id, CAP + 1)
    await _stale(parse, orphan_hold.token)
    # 2. an API process died after storing a batch, before starting its workflow, an hour ago;
    dead_hold = await in_flight.take_slot(parse, user.object_id, CAP + 1)
    dead_batch = f"dead{unique}"
    dead_request = await store.create_batch_memory_request_in_parse(
        parse,
        settings,
        batch_id=dead_batch,
        submission=store.Submission(user.object_id, slot_hold=dead_hold.token),
        memories=[MemoryItem.model_validate(m) for m in chitchat_memories(2)],
    )
    stored_at = (await parse.get_object(BATCH_MEMORY_REQUEST, dead_request, master=True))["batchMetadata"]
    stored_at["created_at"] = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    await parse.update_object(BATCH_MEMORY_REQUEST, dead_request, {"batchMetadata": stored_at}, master=True)
    # 3. an upload in progress: a fresh hold without a request. It must survive the repair.
    live_hold = await in_flight.take_slot(parse, user.object_id, CAP + 1, batch_id=f"live{unique}")

    url = f"{capped_apis[0].url}/v1/memory/batch"
    answers = [
        await http.post(url, json={"memories": chitchat_memories(2)}, headers=_auth(user)) for _ in range(2)
    ]
    ended.extend(a.json()["batch_id"] for a in answers if a.status_code == 202)

    # The first submit is accepted only if both dead slots were freed (three holds, a cap of two); the
    # upload in progress and the new batch then fill the cap, so the second submit waits.
    assert [a.status_code for a in answers] == [202, 429], [a.text for a in answers]
    tokens = {hold.token for hold in await in_flight.holds_of(parse, user.object_id)}
    assert orphan_hold.token not in tokens and dead_hold.token not in tokens and live_hold.token in tokens
    assert await store.find_batch_request(parse, dead_batch) is None, (
        "the never-started request was discarded"
    )
    await in_flight.release(parse, live_hold.token)
