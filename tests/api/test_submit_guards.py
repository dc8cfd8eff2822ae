"""Submissions that must be refused cleanly, replays that must not lie, batches that stay private.

Real API processes, real Parse, real Temporal. Each test names the wrong answer it guards against:
a 502 from Temporal for a legacy batch that was always too big (now 413 before anything is stored),
a replayed 202 for a batch that never started (now 409, or a fresh start once it is an orphan),
an org member reading a colleague's batch (now 404), a storage refusal answered 500 (now 422).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from temporalio.converter import DataConverter

from toolkit.api.auth import AuthenticatedUser
from toolkit.api.batches import BatchService
from toolkit.api.errors import RequestInvalid
from toolkit.api.idempotency import ORPHAN_AFTER_S, idempotent_batch_id
from toolkit.api.legacy_limit import LEGACY_MAX_INPUT_BYTES, legacy_input_bytes
from toolkit.api.schemas import BatchRequestIn, MemoryIn
from toolkit.api.temporal_connection import TemporalConnection
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.errors import ObjectNotFound
from toolkit.parse.models import MemoryItem
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.parse.users import ParseUser, add_to_org_role
from toolkit.rollout import RolloutReader
from toolkit.settings import Settings
from toolkit.temporal.batch_types import BatchContext, LegacyBatchInput
from toolkit.temporal.client import connect
from toolkit.temporal.starter import workflow_id_for
from toolkit.temporal.workflows import NEW_WORKFLOW
from toolkit.timing import HEADER, parse_counts
from toolkit.validation.workloads import chitchat_memories, synthetic_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer, FlagSetter

STILL_STARTING = "a batch with this Idempotency-Key is still being started; retry"
TEMPORAL_BLOB_LIMIT = 2 * 1024 * 1024


def _auth(user: ParseUser) -> dict[str, str]:
    return {"X-Parse-Session-Token": user.session_token}


def _keyed(user: ParseUser, key: str) -> dict[str, str]:
    return {**_auth(user), "Idempotency-Key": key}


async def _post(
    http: httpx.AsyncClient, server: ApiServer, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await http.post(
        f"{server.url}/v1/memory/batch",
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


async def _requests_of(parse: ParseClient, user: ParseUser) -> int:
    pointer = {"__type": "Pointer", "className": "_User", "objectId": user.object_id}
    return await parse.count(BATCH_MEMORY_REQUEST, {"user": pointer}, master=True)


def _payload_bytes(memories: list[dict[str, Any]]) -> int:
    """What Temporal's default JSON converter makes of the memories: compact, ASCII-escaped."""
    return len(json.dumps(memories, separators=(",", ":"), sort_keys=True).encode())


# ---- legacy path: 413 before Temporal's 2 MiB payload limit ------------------------------------------
@pytest.mark.parametrize(
    "memories",
    [
        synthetic_memories(135, content_bytes=14_900),
        chitchat_memories(500),
        [{"content": "é" * 7_000, "type": "document", "metadata": {"ü": ["ß", 1.5, None]}}] * 20,
    ],
    ids=["synthetic", "chitchat", "non-ascii"],
)
def test_legacy_estimate_covers_the_payload_the_sdk_really_sends(memories: list[dict[str, Any]]) -> None:
    items = [MemoryItem.model_validate(m) for m in memories]
    # The largest context there can be: six ids of the maximum length.
    context = BatchContext(*(c * 64 for c in "abcdef"))
    memories_in = [m.model_dump(mode="json") for m in items]
    (payload,) = DataConverter.default.payload_converter.to_payloads([LegacyBatchInput(context, memories_in)])
    estimate, counted = legacy_input_bytes(items)
    assert counted == len(items)
    assert payload.ByteSize() <= estimate <= payload.ByteSize() + 2048


def _assert_legacy_413(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert f"{LEGACY_MAX_INPUT_BYTES:,} bytes" in detail, detail
    assert "2 MiB" in detail and "the reference path has no such limit" in detail, detail


async def test_legacy_batch_over_the_workflow_input_limit_is_413_and_stores_nothing(
    api: ApiServer, http: httpx.AsyncClient, parse: ParseClient, user: ParseUser, set_flags: FlagSetter
) -> None:
    # 200 × 14.9 KB: every memory and the batch are within the API's limits, but as one workflow
    # input it is ~3 MB, which Temporal refuses (that used to surface as a 502 after storing).
    await set_flags(enabled=False, percent=0)
    memories = synthetic_memories(200, content_bytes=14_900)
    assert _payload_bytes(memories) > TEMPORAL_BLOB_LIMIT
    _assert_legacy_413(await _post(http, api, {"memories": memories}, _auth(user)))
    assert await _requests_of(parse, user) == 0


async def test_legacy_limit_counts_the_json_escapes_temporal_adds(
    api: ApiServer, http: httpx.AsyncClient, parse: ParseClient, user: ParseUser, set_flags: FlagSetter
) -> None:
    # 50 × 7,000 "é": 700,000 bytes of UTF-8 content, but Temporal's JSON escapes each "é" as
    # \u00e9 (6 bytes): 2.1 MB on the wire. Counting UTF-8 bytes would let it through to a 502.
    await set_flags(enabled=False, percent=0)
    memories = [{"content": "é" * 7_000, "type": "text", "metadata": {}} for _ in range(50)]
    assert sum(len(m["content"].encode()) for m in memories) == 700_000
    assert _payload_bytes(memories) > TEMPORAL_BLOB_LIMIT
    _assert_legacy_413(await _post(http, api, {"memories": memories}, _auth(user)))
    assert await _requests_of(parse, user) == 0


async def test_legacy_batch_just_under_the_limit_is_started_and_one_more_memory_is_413(
    unpolled_api: ApiServer,
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    set_flags: FlagSetter,
) -> None:
    await set_flags(enabled=False, percent=0)
    memory = {"content": "x" * 14_000, "type": "text", "metadata": {}}
    per_memory = _payload_bytes([memory]) - 2 + 1  # minus the list's brackets, plus a comma
    fits = (LEGACY_MAX_INPUT_BYTES - 1024) // per_memory
    assert _payload_bytes([memory] * fits) + 1024 <= LEGACY_MAX_INPUT_BYTES
    assert LEGACY_MAX_INPUT_BYTES < _payload_bytes([memory] * (fits + 1)) < TEMPORAL_BLOB_LIMIT

    accepted = await _post(http, unpolled_api, {"memories": [memory] * fits}, _auth(user))
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["storage"] == "legacy"
    temporal = await connect(settings)
    handle = temporal.get_workflow_handle(accepted.json()["workflow_id"])
    try:
        # Temporal took the real input: the estimate's margin covers what the estimate leaves out.
        assert (await handle.describe()).workflow_type == "ProcessBatchMemoryWorkflow"
    finally:
        await handle.terminate(reason="test: nothing polls this task queue")
        stored = await store.find_batch_request(parse, accepted.json()["batch_id"])
        assert stored is not None and stored.object_id is not None
        await store.delete_batch_request(parse, stored.object_id)

    _assert_legacy_413(await _post(http, unpolled_api, {"memories": [memory] * (fits + 1)}, _auth(user)))
    assert await _requests_of(parse, user) == 0


async def test_reference_path_takes_what_the_legacy_path_refuses(
    unpolled_api: ApiServer,
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    set_flags: FlagSetter,
) -> None:
    await set_flags(enabled=True, percent=100)
    accepted = await _post(
        http, unpolled_api, {"memories": synthetic_memories(200, content_bytes=14_900)}, _auth(user)
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["storage"] == "reference"
    temporal = await connect(settings)
    await temporal.get_workflow_handle(accepted.json()["workflow_id"]).terminate(reason="test")
    stored = await store.find_batch_request(parse, accepted.json()["batch_id"])
    assert stored is not None and stored.object_id is not None
    await store.delete_batch_request(parse, stored.object_id)


# ---- idempotency: replay only what was started -----------------------------------------------------------
async def _store_unstarted(
    parse: ParseClient, settings: Settings, user: ParseUser, key: str
) -> tuple[str, str]:
    """What an API that stored a batch and then crashed (or is still starting it) leaves behind."""
    batch_id = idempotent_batch_id(user.object_id, key)
    request_id = await store.create_batch_memory_request_in_parse(
        parse,
        settings,
        batch_id=batch_id,
        submission=store.Submission(user.object_id, idempotency_key=key),
        memories=[MemoryItem.model_validate(m) for m in chitchat_memories(3)],
        storage="reference",
    )
    return batch_id, request_id


async def test_idempotency_key_of_a_batch_still_being_started_is_409(
    api: ApiServer,
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    unique: str,
) -> None:
    key = f"starting-{unique}"
    _, request_id = await _store_unstarted(parse, settings, user, key)

    response = await _post(
        http, api, {"memories": chitchat_memories(3)}, {**_auth(user), "Idempotency-Key": key}
    )
    assert response.status_code == 409, response.text
    assert response.json() == {"detail": STILL_STARTING}
    # Nothing new stored, and the one in flight left alone.
    assert await _requests_of(parse, user) == 1
    left = await store.fetch_batch_memory_request_from_parse(parse, settings, request_id, with_memories=False)
    assert left is not None and left.status == "pending" and left.workflow_id is None


async def test_idempotency_key_of_an_orphaned_batch_discards_it_and_starts_afresh(
    api: ApiServer,
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    unique: str,
) -> None:
    key = f"orphan-{unique}"
    batch_id, orphan_id = await _store_unstarted(parse, settings, user, key)
    orphan = await store.fetch_batch_memory_request_from_parse(
        parse, settings, orphan_id, with_memories=False
    )
    assert orphan is not None and orphan.batch_metadata is not None and orphan.batch_data_file is not None
    # Parse keeps createdAt to itself; the API's own record of when it stored the batch is what
    # ages. Backdate it past the point where any start could still be in flight.
    backdated = orphan.batch_metadata.model_copy(
        update={"created_at": datetime.now(UTC) - timedelta(seconds=ORPHAN_AFTER_S + 60)}
    )
    await parse.update_object(
        BATCH_MEMORY_REQUEST, orphan_id, {"batchMetadata": backdated.to_parse()}, master=True
    )

    response = await _post(
        http, api, {"memories": chitchat_memories(4)}, {**_auth(user), "Idempotency-Key": key}
    )
    assert response.status_code == 202, response.text
    assert "Idempotent-Replayed" not in response.headers
    assert response.json()["batch_id"] == batch_id and response.json()["total_memories"] == 4
    # The orphan and its file are gone; the new request is the only one, and it was started.
    with pytest.raises(ObjectNotFound):
        await parse.get_object(BATCH_MEMORY_REQUEST, orphan_id, master=True)
    with pytest.raises(ObjectNotFound):
        await parse.download(orphan.batch_data_file.url or "")
    assert await _requests_of(parse, user) == 1
    fresh = await store.find_by_idempotency_key(parse, user.object_id, key)
    assert fresh is not None and fresh.object_id != orphan_id
    assert fresh.workflow_id == workflow_id_for(batch_id) and fresh.total_memories == 4

    replay = await _post(
        http, api, {"memories": chitchat_memories(4)}, {**_auth(user), "Idempotency-Key": key}
    )
    assert replay.status_code == 202 and replay.json() == response.json()
    assert replay.headers["Idempotent-Replayed"] == "true"


async def test_idempotency_key_replays_a_started_workflow_whose_id_was_never_recorded(
    api: ApiServer,
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    unique: str,
) -> None:
    # The API started the workflow and crashed before writing workflowId: Temporal has the answer.
    key = f"started-{unique}"
    batch_id, request_id = await _store_unstarted(parse, settings, user, key)
    temporal = await connect(settings)
    handle = await temporal.start_workflow(
        NEW_WORKFLOW,
        {"request_id": request_id, "batch_id": batch_id},
        id=workflow_id_for(batch_id),
        task_queue=f"unpolled-{unique}",
    )
    try:
        response = await _post(
            http, api, {"memories": chitchat_memories(3)}, {**_auth(user), "Idempotency-Key": key}
        )
    finally:
        await handle.terminate(reason="test: nothing polls this task queue")
    assert response.status_code == 202, response.text
    assert response.headers["Idempotent-Replayed"] == "true"
    assert response.json()["batch_id"] == batch_id
    assert response.json()["workflow_id"] == workflow_id_for(batch_id)
    assert await _requests_of(parse, user) == 1
    # The describe that found the workflow is in the answer's Server-Timing, as the API's Temporal call
    # (toolkit saturation counts the API's share of the calls from it).
    assert parse_counts(response.headers[HEADER]).get("temporal.describe") == 1


# ---- privacy: the owner only, whatever the ACL lets an org role read --------------------------------------
async def test_org_member_gets_404_for_a_colleagues_batch(
    api: ApiServer,
    http: httpx.AsyncClient,
    parse: ParseClient,
    user: ParseUser,
    other_user: ParseUser,
    unique: str,
) -> None:
    organization_id = f"org{unique}"
    await add_to_org_role(parse, organization_id, [other_user.object_id])
    accepted = await _post(
        http, api, {"memories": chitchat_memories(2), "organization_id": organization_id}, _auth(user)
    )
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["batch_id"]
    # The object ACL does grant the org role read access (design §4.2)...
    seen = await store.find_batch_request(parse, batch_id, session_token=other_user.session_token)
    assert seen is not None and seen.batch_id == batch_id
    # ...but the status API answers for the owner only (design §4.3).
    colleague = await http.get(f"{api.url}/v1/batch/{batch_id}/status", headers=_auth(other_user))
    assert colleague.status_code == 404
    assert colleague.content == b'{"detail":"batch not found"}'
    owner = await http.get(f"{api.url}/v1/batch/{batch_id}/status", headers=_auth(user))
    assert owner.status_code == 200 and owner.json()["batch_id"] == batch_id


# ---- safety net: storage refusing a batch is the caller's 422, not a 500 ----------------------------------
@pytest.mark.parametrize("enabled", [True, False], ids=["reference", "legacy"])
async def test_storage_refusing_a_batch_is_422_and_stores_nothing(
    parse: ParseClient, settings: Settings, user: ParseUser, set_flags: FlagSetter, enabled: bool
) -> None:
    await set_flags(enabled=enabled, percent=100)
    temporal = TemporalConnection(settings)
    service = BatchService(settings, parse, temporal, RolloutReader(parse, settings))
    # Built without validation: what storage would see if a bad memory ever got past the model.
    memory = MemoryIn.model_construct(content="x", type="text", metadata={"k": "\ud800"})
    batch = BatchRequestIn.model_construct(memories=[memory])
    try:
        with pytest.raises(RequestInvalid) as refused:
            await service.submit(AuthenticatedUser(user.object_id, user.session_token), batch, None)
    finally:
        await temporal.aclose()
    assert refused.value.errors[0]["loc"] == ["body", "memories"]
    assert "cannot be stored" in refused.value.errors[0]["msg"]
    assert await _requests_of(parse, user) == 0
