"""A signed-in user talking to Parse's REST API directly, with the app's PUBLIC keys (issue 16).

Parse's application id and REST key are in every client by design, so this is the ordinary threat: a
user with a session token who skips the toolkit's API. Every write below succeeded before the class-
level permissions were closed (create/update to any signed-in user, owner ACL with write) and the
files made private; each is now refused by the real Parse Server, with the refusal Parse gives for a
permission (never a 5xx or a timeout, which would pass for a refusal while meaning an outage).

The requests here are raw ``httpx`` calls carrying exactly what a client holds: app id, REST key and a
session token. No toolkit code stands between the attacker and Parse.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import StorageDriverStoreContext

from toolkit.api.idempotency import idempotent_batch_id
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.memory_writer import MemoryWriter, WriteContext
from toolkit.parse.models import MemoryItem, memory_object_id
from toolkit.parse.schema import (
    BATCH_MEMORY_ERROR,
    BATCH_MEMORY_REQUEST,
    BATCH_SLOT,
    BATCH_SLOT_HOLD,
    MEMORY,
    TEMPORAL_PAYLOAD,
)
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.external_storage import ParseFilesStorageDriver
from toolkit.validation.workloads import synthetic_memories

# Parse's refusal of an operation: HTTP 400 {"code": 119} from a class-level permission.
OPERATION_FORBIDDEN = 119
# A file read refused by the server's beforeFind(Parse.File) trigger (parse-server/server.js).
FILE_READ_REFUSED = {"code": OPERATION_FORBIDDEN, "error": "files are readable with the master key only"}
# A file upload refused by Parse's fileUpload options.
FILE_UPLOAD_REFUSED = {"code": 130, "error": "File upload by authenticated user is disabled."}


def public_headers(settings: Settings, user: ParseUser | None = None) -> dict[str, str]:
    """What any client holds: the app id and the REST key (public), plus a session if signed in."""
    headers = {
        "X-Parse-Application-Id": settings.parse_app_id,
        "X-Parse-REST-API-Key": settings.parse_rest_api_key,
    }
    if user is not None:
        headers["X-Parse-Session-Token"] = user.session_token
    return headers


def pointer(user: ParseUser) -> dict[str, str]:
    return {"__type": "Pointer", "className": "_User", "objectId": user.object_id}


def assert_forbidden(response: httpx.Response) -> None:
    """Refused as a permission (Parse code 119): not a 5xx, not a missing object, not a success."""
    assert response.status_code == 400, (response.status_code, response.content[:200])
    assert response.json().get("code") == OPERATION_FORBIDDEN, response.text


@pytest.fixture
async def rest(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=settings.parse_url + "/", timeout=30.0) as client:
        yield client


@pytest.fixture
async def own_request(
    parse: ParseClient, settings: Settings, user: ParseUser, unique: str
) -> AsyncIterator[dict[str, Any]]:
    """The attacker's own batch, stored as the API stores it; the raw row as the owner reads it."""
    request_id = await store.create_batch_memory_request_in_parse(
        parse,
        settings,
        batch_id=f"tamper{unique}",
        submission=store.Submission(user.object_id, idempotency_key=f"key-{unique}"),
        memories=[MemoryItem.model_validate(m) for m in synthetic_memories(3, content_bytes=50)],
    )
    row = await parse.get_object(BATCH_MEMORY_REQUEST, request_id, session_token=user.session_token)
    yield row
    await store.delete_batch_request(parse, request_id)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param("user", id="owner-to-victim"),
        pytest.param({"successCount": 999, "processedCount": 999}, id="counters"),
        pytest.param({"status": "completed"}, id="status"),
        pytest.param({"webhookUrl": "https://attacker.example/hook"}, id="webhook"),
        pytest.param({"ACL": {"*": {"read": True, "write": True}}}, id="acl-public"),
    ],
)
async def test_the_owner_cannot_change_their_own_request(
    rest: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    other_user: ParseUser,
    own_request: dict[str, Any],
    change: str | dict[str, Any],
) -> None:
    body = {"user": pointer(other_user)} if change == "user" else change
    request_id = own_request["objectId"]
    answer = await rest.put(
        f"classes/{BATCH_MEMORY_REQUEST}/{request_id}", json=body, headers=public_headers(settings, user)
    )
    assert_forbidden(answer)
    stored = await parse.get_object(BATCH_MEMORY_REQUEST, request_id, master=True)
    assert stored["user"]["objectId"] == user.object_id
    assert (stored["status"], stored["successCount"], stored.get("webhookUrl")) == ("pending", 0, None)
    assert "*" not in stored["ACL"]


async def test_the_owner_cannot_delete_their_own_request(
    rest: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    own_request: dict[str, Any],
) -> None:
    request_id = own_request["objectId"]
    answer = await rest.delete(
        f"classes/{BATCH_MEMORY_REQUEST}/{request_id}", headers=public_headers(settings, user)
    )
    assert_forbidden(answer)
    assert (await parse.get_object(BATCH_MEMORY_REQUEST, request_id, master=True))["objectId"] == request_id


async def test_a_user_cannot_create_a_request_for_anyone(
    rest: httpx.AsyncClient, parse: ParseClient, settings: Settings, user: ParseUser, other_user: ParseUser
) -> None:
    """A forged ``pending`` request for the victim would hold one of the victim's in-flight slots, and one
    with the victim's next Idempotency-Key would be replayed to the victim's real submission."""
    key = f"victim-key-{uuid.uuid4().hex[:8]}"
    batch_id = idempotent_batch_id(other_user.object_id, key)
    forged = {
        "batchId": batch_id,
        "user": pointer(other_user),
        "status": "pending",
        "idempotencyKey": key,
        "workflowRunId": "forged",
        "ACL": {other_user.object_id: {"read": True}},
    }
    for owner in (other_user, user):
        answer = await rest.post(
            f"classes/{BATCH_MEMORY_REQUEST}",
            json={**forged, "user": pointer(owner)},
            headers=public_headers(settings, user),
        )
        assert_forbidden(answer)
    # Through /batch too (Parse runs every sub-request with the caller's rights).
    batch = await rest.post(
        "batch",
        json={
            "requests": [
                {
                    "method": "POST",
                    "path": f"{parse.mount_path}/classes/{BATCH_MEMORY_REQUEST}",
                    "body": forged,
                }
            ]
        },
        headers=public_headers(settings, user),
    )
    assert batch.status_code == 200, batch.text
    [result] = batch.json()
    assert result["error"]["code"] == OPERATION_FORBIDDEN, result
    assert await parse.count(BATCH_MEMORY_REQUEST, {"batchId": batch_id}, master=True) == 0
    assert await store.find_by_idempotency_key(parse, other_user.object_id, key) is None


async def test_planted_memory_ids_are_refused_and_the_batch_writes_every_memory(
    rest: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    other_user: ParseUser,
    unique: str,
) -> None:
    """Memory objectIds are derived from (batch, index); a planted one used to be taken for "already
    written" (Parse 137), so the real batch skipped that memory and reported it written: silent loss."""
    batch_id = f"plant{unique}"
    planted = {2: user, 4: other_user}  # one owned by the attacker, one claimed for the victim
    for index, owner in planted.items():
        body = {
            "objectId": memory_object_id(batch_id, index),
            "content": "planted",
            "batchId": batch_id,
            "index": index,
            "user": pointer(owner),
        }
        answer = await rest.post(f"classes/{MEMORY}", json=body, headers=public_headers(settings, user))
        assert_forbidden(answer)

    items = [(i, MemoryItem.model_validate(m)) for i, m in enumerate(synthetic_memories(6, content_bytes=40))]
    outcomes = await MemoryWriter(parse).write(WriteContext(batch_id, other_user.object_id), items)
    assert [(o.index, o.ok, o.already_written) for o in outcomes] == [(i, True, False) for i in range(6)]
    rows = await parse.find(MEMORY, {"batchId": batch_id}, limit=10, order="index", master=True)
    assert [(r["index"], r["user"]["objectId"], r["content"]) for r in rows] == [
        (i, other_user.object_id, items[i][1].content) for i in range(6)
    ]
    # The victim's memories are theirs to read, and not to change.
    row = rows[0]
    put = await rest.put(
        f"classes/{MEMORY}/{row['objectId']}",
        json={"content": "x"},
        headers=public_headers(settings, other_user),
    )
    assert_forbidden(put)
    delete = await rest.delete(
        f"classes/{MEMORY}/{row['objectId']}", headers=public_headers(settings, other_user)
    )
    assert_forbidden(delete)
    read = await rest.get(f"classes/{MEMORY}/{row['objectId']}", headers=public_headers(settings, other_user))
    assert read.status_code == 200 and read.json()["content"] == items[0][1].content
    await parse.batch(
        [{"method": "DELETE", "path": f"{parse.mount_path}/classes/{MEMORY}/{r['objectId']}"} for r in rows],
        master=True,
    )


@pytest.mark.parametrize("class_name", [BATCH_MEMORY_ERROR, TEMPORAL_PAYLOAD, BATCH_SLOT, BATCH_SLOT_HOLD])
async def test_server_only_classes_refuse_every_client_write(
    rest: httpx.AsyncClient, parse: ParseClient, settings: Settings, user: ParseUser, class_name: str
) -> None:
    object_id = f"forged{uuid.uuid4().hex[:10]}"
    headers = public_headers(settings, user)
    created = await rest.post(
        f"classes/{class_name}", json={"objectId": object_id, "user": pointer(user)}, headers=headers
    )
    assert_forbidden(created)
    await parse.create_object(
        class_name,
        {"objectId": object_id, "ACL": {user.object_id: {"read": True, "write": True}}},
        master=True,
    )
    try:
        assert_forbidden(
            await rest.put(f"classes/{class_name}/{object_id}", json={"user": pointer(user)}, headers=headers)
        )
        assert_forbidden(await rest.delete(f"classes/{class_name}/{object_id}", headers=headers))
    finally:
        await parse.delete_object(class_name, object_id, master=True)


async def test_no_new_classes_fields_roles_or_config(
    rest: httpx.AsyncClient, settings: Settings, user: ParseUser, own_request: dict[str, Any]
) -> None:
    headers = public_headers(settings, user)
    assert_forbidden(await rest.post("classes/AttackerClass", json={"x": 1}, headers=headers))
    assert_forbidden(
        await rest.post("roles", json={"name": "org_victim", "ACL": {"*": {"read": True}}}, headers=headers)
    )
    config = await rest.put("config", json={"params": {"USE_PARSE_BATCH_STORAGE": True}}, headers=headers)
    assert config.status_code == 403, config.text


async def test_a_user_cannot_upload_files(
    rest: httpx.AsyncClient, settings: Settings, user: ParseUser
) -> None:
    """Only the server stores files; a client that could would fill the server's disk or plant a file
    that a forged reference points at."""
    answer = await rest.post(
        "files/planted.json.gz",
        content=gzip.compress(b"[]"),
        headers={**public_headers(settings, user), "Content-Type": "application/gzip"},
    )
    assert (answer.status_code, answer.json()) == (400, FILE_UPLOAD_REFUSED)


# ---- files: readable with the master key only -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StoredFile:
    kind: str
    url: str
    data: bytes


@pytest.fixture
async def stored_files(
    parse: ParseClient, settings: Settings, user: ParseUser, unique: str, own_request: dict[str, Any]
) -> AsyncIterator[list[StoredFile]]:
    """One of each kind of file the toolkit keeps: a batch file, a chunk file, a Temporal payload file.

    The owner learns the URLs of their own batch's files from their own request row (Parse shows File
    fields to whoever may read the row); a payload file's name is in the workflow history.
    """
    files = []
    batch_url = own_request["batchDataFile"]["url"]
    files.append(StoredFile("batch", batch_url, await parse.download(batch_url)))

    chunked = dataclasses.replace(settings, batch_chunk_memories=2)
    writer = store.ChunkedBatchWriter(parse, chunked, f"tamperc{unique}")
    for memory in synthetic_memories(4, content_bytes=30):
        await writer.add(memory)
    chunks = await writer.finish()
    chunked_id = await store.create_chunked_batch_memory_request(
        parse,
        chunked,
        batch_id=f"tamperc{unique}",
        submission=store.Submission(user.object_id),
        chunks=chunks,
    )
    row = await parse.get_object(BATCH_MEMORY_REQUEST, chunked_id, session_token=user.session_token)
    # Files inside an Array come back by name only; the URL is the server's files route plus the name.
    chunk_url = file_url(settings, row["batchChunkFiles"][0]["name"])
    files.append(StoredFile("chunk", chunk_url, await parse.download(chunk_url)))

    driver = ParseFilesStorageDriver(settings)
    payload = Payload(metadata={"encoding": b"binary/plain"}, data=uuid.uuid4().bytes * 64)
    [claim] = await driver.store(StorageDriverStoreContext(), [payload])
    payload_url = file_url(settings, claim.claim_data["name"])
    files.append(StoredFile("payload", payload_url, await parse.download(payload_url)))
    yield files
    await store.delete_batch_request(parse, chunked_id)
    await parse.delete_file(claim.claim_data["name"])
    await parse.delete_object(TEMPORAL_PAYLOAD, claim.claim_data["digest"], master=True)
    await driver.aclose()


def file_url(settings: Settings, name: str) -> str:
    return f"{settings.parse_url}/files/{settings.parse_app_id}/{name}"


def metadata_url(settings: Settings, url: str) -> str:
    return file_url(settings, "metadata/" + url.rsplit("/", 1)[1])


async def test_files_are_readable_with_the_master_key_only(
    rest: httpx.AsyncClient,
    settings: Settings,
    user: ParseUser,
    other_user: ParseUser,
    stored_files: list[StoredFile],
) -> None:
    callers = {
        "anonymous": {},
        "public keys": public_headers(settings),
        "another user's session": public_headers(settings, other_user),
        "the owner's session": public_headers(settings, user),
        "a wrong master key": {**public_headers(settings), "X-Parse-Master-Key": "not-the-key"},
    }
    assert {file.kind for file in stored_files} == {"batch", "chunk", "payload"}
    for file in stored_files:
        assert file.data, file.kind  # the server (master key) reads it
        for caller, headers in callers.items():
            for url in (file.url, metadata_url(settings, file.url)):
                answer = await rest.get(url, headers=headers)
                assert answer.status_code == 403, (file.kind, caller, url, answer.content[:100])
                assert answer.json() == FILE_READ_REFUSED, (file.kind, caller, url)
        master = {**public_headers(settings), "X-Parse-Master-Key": settings.parse_master_key}
        assert (await rest.get(file.url, headers=master)).content == file.data, file.kind
        metadata = await rest.get(metadata_url(settings, file.url), headers=master)
        assert metadata.status_code == 200, metadata.text
        json.loads(metadata.content)  # the fs adapter keeps no metadata; the route answers, as JSON
