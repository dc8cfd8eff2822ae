"""The batch HTTP API over real HTTP: a real API process, real Parse, real Temporal (issue 5, design §4.3)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from temporalio.client import Client

from toolkit.api.errors import WORKFLOWS_REFUSED, WORKFLOWS_UNAVAILABLE
from toolkit.api.idempotency import idempotent_batch_id
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.parse.users import ParseUser, sign_up
from toolkit.rollout import canary_bucket
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.validation.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer, FlagSetter

STILL_STARTING = "a batch with this Idempotency-Key is still being started; retry"

ACCEPTED_TYPES = {
    "batch_id": str,
    "workflow_id": str,
    "status": str,
    "storage": str,
    "total_memories": int,
    "status_url": str,
}


def _auth(user: ParseUser) -> dict[str, str]:
    return {"X-Parse-Session-Token": user.session_token}


def _user_pointer(user: ParseUser) -> dict[str, str]:
    return {"__type": "Pointer", "className": "_User", "objectId": user.object_id}


async def _requests_of(parse: ParseClient, user: ParseUser) -> int:
    """How many BatchMemoryRequest objects the user has, in any status (master key: ACL is no filter)."""
    return await parse.count(BATCH_MEMORY_REQUEST, {"user": _user_pointer(user)}, master=True)


async def _post(
    http: httpx.AsyncClient, server: ApiServer, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await http.post(
        f"{server.url}/v1/memory/batch",
        content=raw,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


async def _user_in(parse: ParseClient, *, canary: bool, percent: int) -> ParseUser:
    """A new user whose bucket falls inside (or outside) the first ``percent`` buckets."""
    while True:
        user = await sign_up(parse)
        if (canary_bucket(user.object_id) < percent) == canary:
            return user


# ---- both paths --------------------------------------------------------------------------------------
async def test_both_paths_answer_202_with_the_same_shape(
    api: ApiServer, http: httpx.AsyncClient, parse: ParseClient, set_flags: FlagSetter
) -> None:
    in_canary = await _user_in(parse, canary=True, percent=50)
    outside = await _user_in(parse, canary=False, percent=50)
    memories = chitchat_memories(12)

    await set_flags(enabled=True, percent=50)
    reference = await _post(http, api, {"memories": memories}, _auth(in_canary))
    legacy_by_canary = await _post(http, api, {"memories": memories}, _auth(outside))
    await set_flags(enabled=False, percent=50)
    legacy_by_flag = await _post(http, api, {"memories": memories}, _auth(in_canary))

    answers = [reference, legacy_by_canary, legacy_by_flag]
    assert [r.status_code for r in answers] == [202, 202, 202], [r.text for r in answers]
    bodies = [r.json() for r in answers]
    assert [b["storage"] for b in bodies] == ["reference", "legacy", "legacy"]
    for body in bodies:
        assert {k: type(v) for k, v in body.items()} == ACCEPTED_TYPES
        assert body["status"] == "pending"
        assert body["total_memories"] == 12
        assert body["workflow_id"] == f"batch-{body['batch_id']}"
        assert body["status_url"] == f"/v1/batch/{body['batch_id']}/status"
    assert len({b["batch_id"] for b in bodies}) == 3

    # What was stored matches what was answered: a file only on the reference path.
    for body in bodies:
        stored = await store.find_batch_request(parse, body["batch_id"])
        assert stored is not None and stored.batch_metadata is not None
        assert stored.batch_metadata.storage == body["storage"]
        assert (stored.batch_data_file is not None) == (body["storage"] == "reference")
        assert stored.workflow_id == body["workflow_id"]
        assert stored.total_memories == 12


async def test_bearer_token_is_accepted(api: ApiServer, http: httpx.AsyncClient, user: ParseUser) -> None:
    response = await _post(
        http, api, {"memories": chitchat_memories(2)}, {"Authorization": f"Bearer {user.session_token}"}
    )
    assert response.status_code == 202, response.text
    status = await http.get(
        f"{api.url}{response.json()['status_url']}", headers={"Authorization": f"Bearer {user.session_token}"}
    )
    assert status.status_code == 200


# ---- bad input: 4xx, never 5xx, nothing stored ---------------------------------------------------------
GOOD = {"content": "a memory", "type": "text", "metadata": {}}


def _body(memories: Any, **extra: Any) -> bytes:
    return json.dumps({"memories": memories, **extra}).encode()


def _nested(levels: int) -> dict[str, Any]:
    """A metadata object ``levels`` deep: ``{}`` is 1 level, ``{"k": {}}`` is 2."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def _memory_with(metadata: dict[str, Any]) -> dict[str, Any]:
    return {"content": "a memory", "type": "text", "metadata": metadata}


def _deep_body(levels: int) -> bytes:
    # Built as text: json.dumps itself gives up (RecursionError) long before 100,000 levels.
    inner = b'{"k":' * (levels - 1) + b"{}" + b"}" * (levels - 1)
    return b'{"memories": [{"content": "x", "metadata": ' + inner + b"}]}"


_METADATA_0 = ["body", "memories", 0, "metadata"]
_METADATA_1 = ["body", "memories", 1, "metadata"]

INVALID_BODIES: list[tuple[str, bytes, list[Any]]] = [
    ("empty list", _body([]), ["body", "memories"]),
    ("no memories field", json.dumps({"organization_id": "abc"}).encode(), ["body", "memories"]),
    ("memories not a list", _body("hello"), ["body", "memories"]),
    ("content not a string", _body([GOOD, {"content": 42}]), ["body", "memories", 1, "content"]),
    (
        "metadata not an object",
        _body([{"content": "x", "metadata": [1]}]),
        ["body", "memories", 0, "metadata"],
    ),  # noqa: E501
    ("unknown type", _body([GOOD, GOOD, {"content": "x", "type": "video"}]), ["body", "memories", 2, "type"]),
    (
        "content over 15,000 bytes",
        _body([GOOD, {"content": "é" * 7_501}]),
        ["body", "memories", 1, "content"],
    ),  # noqa: E501
    ("empty content", _body([{"content": ""}]), ["body", "memories", 0, "content"]),
    ("unknown field", _body([GOOD], memorys=[]), ["body", "memorys"]),
    ("bad organization id", _body([GOOD], organization_id="../x"), ["body", "organization_id"]),
    ("malformed JSON", b'{"memories": [', ["body", 14]),
    ("not UTF-8", b'{"memories": [{"content": "\xff"}]}', ["body", 27]),
    ("empty body", b"", ["body", 0]),
    # Bodies that once answered 500: too deep for the serializers, or not storable as UTF-8 JSON.
    (
        "metadata nested 33 levels",
        _body([GOOD, _memory_with(_nested(33))]),
        ["body", "memories", 1, "metadata"],
    ),
    ("metadata nested 256 levels", _body([_memory_with(_nested(256))]), ["body", "memories", 0, "metadata"]),
    ("body nested 1,000 levels", _deep_body(1_000), ["body"]),
    ("body nested 100,000 levels", _deep_body(100_000), ["body"]),
    ("lone surrogate in metadata value", _body([GOOD, _memory_with({"k": "\ud800"})]), _METADATA_1),
    ("lone surrogate in metadata key", _body([GOOD, _memory_with({"\udfff": 1})]), _METADATA_1),
    ("lone surrogate deep in metadata", _body([GOOD, _memory_with({"a": [{"b": "x\udc00"}]})]), _METADATA_1),
    ("lone surrogate in content", _body([{"content": "\ud800"}]), ["body", "memories", 0, "content"]),
    ("NaN in metadata", b'{"memories": [{"content": "x", "metadata": {"n": NaN}}]}', _METADATA_0),
    ("1e400 in metadata", b'{"memories": [{"content": "x", "metadata": {"n": 1e400}}]}', _METADATA_0),
    (
        "integer of 5,000 digits",
        b'{"memories": [{"content": "x", "metadata": {"n": ' + b"9" * 5_000 + b"}}]}",
        ["body"],
    ),
]


@pytest.mark.parametrize(("case", "raw", "loc"), INVALID_BODIES, ids=[c[0] for c in INVALID_BODIES])
async def test_invalid_body_is_422_naming_the_field_and_stores_nothing(
    api: ApiServer,
    http: httpx.AsyncClient,
    parse: ParseClient,
    user: ParseUser,
    case: str,
    raw: bytes,
    loc: list[Any],
) -> None:
    response = await _post(http, api, raw, _auth(user))
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert loc in [e["loc"] for e in errors], errors
    if case == "content over 15,000 bytes":
        assert "15,002 bytes" in errors[0]["msg"] and "15,000" in errors[0]["msg"]
    if case.startswith("metadata nested"):
        assert errors[0]["msg"] == "Value error, metadata is nested more than 32 levels deep; the limit is 32"
    if "surrogate" in case and "metadata" in case:
        assert "lone surrogate" in errors[0]["msg"], errors
    if case.startswith("body nested"):
        assert errors[0]["msg"] == "JSON nested too deeply", errors
    assert await _requests_of(parse, user) == 0


async def test_metadata_nested_32_levels_is_accepted(
    api: ApiServer, http: httpx.AsyncClient, parse: ParseClient, user: ParseUser
) -> None:
    response = await _post(http, api, {"memories": [_memory_with(_nested(32))]}, _auth(user))
    assert response.status_code == 202, response.text
    stored = await store.find_batch_request(parse, response.json()["batch_id"])
    assert stored is not None and stored.total_memories == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Parse-Session-Token": "r:0123456789abcdef0123456789abcdef"},
        {"Authorization": "Bearer r:not-a-session"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["no token", "bad session header", "bad bearer", "basic auth"],
)
async def test_missing_or_invalid_session_is_401(
    api: ApiServer, http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    submit = await _post(http, api, {"memories": [GOOD]}, headers)
    status = await http.get(f"{api.url}/v1/batch/abc/status", headers=headers)
    for response in (submit, status):
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "session token" in response.json()["detail"]


async def test_invalid_idempotency_key_is_422(
    api: ApiServer, http: httpx.AsyncClient, parse: ParseClient, user: ParseUser
) -> None:
    response = await _post(http, api, {"memories": [GOOD]}, {**_auth(user), "Idempotency-Key": "has spaces"})
    assert response.status_code == 422
    assert ["header", "Idempotency-Key"] in [e["loc"] for e in response.json()["detail"]]
    assert await _requests_of(parse, user) == 0


async def test_too_many_memories_is_413(
    small_api: ApiServer, http: httpx.AsyncClient, parse: ParseClient, user: ParseUser
) -> None:
    response = await _post(http, small_api, {"memories": [GOOD] * 6}, _auth(user))
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == "too many memories: 6; the limit is 5 per batch"
    # The limit itself is accepted.
    assert (await _post(http, small_api, {"memories": [GOOD] * 5}, _auth(user))).status_code == 202
    assert await _requests_of(parse, user) == 1


async def test_too_many_content_bytes_is_413(
    small_api: ApiServer, http: httpx.AsyncClient, parse: ParseClient, user: ParseUser
) -> None:
    # 2 × 10,001 bytes: each memory is within 15,000, the batch is over its 20,000.
    response = await _post(http, small_api, {"memories": [{"content": "x" * 10_001}] * 2}, _auth(user))
    assert response.status_code == 413, response.text
    assert "total memory content is 20,002 bytes" in response.json()["detail"]
    assert await _requests_of(parse, user) == 0


async def _raw_request_head(server: ApiServer, user: ParseUser, framing: str) -> tuple[Any, Any]:
    """Open a connection and send only the request head: the body is for the caller to (not) send."""
    url = httpx.URL(server.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    head = (
        f"POST /v1/memory/batch HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: application/json\r\n"
        f"X-Parse-Session-Token: {user.session_token}\r\n{framing}\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


async def _read_status_and_detail(reader: Any) -> tuple[int, str]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = int(head.split(b" ", 2)[1])
    headers = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    length = int(headers[b"content-length"])
    body = await asyncio.wait_for(reader.readexactly(length), 30)
    return status, json.loads(body)["detail"]


async def test_oversized_content_length_is_refused_before_reading_the_body(
    small_api: ApiServer, parse: ParseClient, user: ParseUser
) -> None:
    from toolkit.api.body import max_body_bytes

    limit = max_body_bytes(small_api.settings)
    # Announce 10 GB and send none of it: the answer can only come from the header.
    reader, writer = await _raw_request_head(small_api, user, "Content-Length: 10000000000")
    try:
        status, detail = await _read_status_and_detail(reader)
    finally:
        writer.close()
    assert status == 413
    assert detail == f"request body is 10,000,000,000 bytes; the limit is {limit:,} bytes"
    assert await _requests_of(parse, user) == 0


async def test_oversized_chunked_body_is_refused_while_still_streaming(
    small_api: ApiServer, parse: ParseClient, user: ParseUser
) -> None:
    from toolkit.api.body import max_body_bytes

    limit = max_body_bytes(small_api.settings)
    reader, writer = await _raw_request_head(small_api, user, "Transfer-Encoding: chunked")
    try:
        # No Content-Length: the server learns the size by reading. Send a little over the limit
        # and never the final chunk, so a 413 proves it stopped reading mid-body.
        sent = 0
        piece = b'{"memories": [' + b"0," * 8191
        while sent <= limit:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
        await writer.drain()
        status, detail = await _read_status_and_detail(reader)
    finally:
        writer.close()
    assert status == 413
    assert detail == f"request body exceeds the limit of {limit:,} bytes"
    assert await _requests_of(parse, user) == 0


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "http://127.0.0.1:8080/hook", "http://10.1.2.3/hook", "not a url"]
)
async def test_refused_webhook_url_is_422(
    small_api: ApiServer, http: httpx.AsyncClient, parse: ParseClient, user: ParseUser, url: str
) -> None:
    response = await _post(http, small_api, {"memories": [GOOD], "webhook_url": url}, _auth(user))
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "webhook_url"]]
    assert await _requests_of(parse, user) == 0


async def test_unsupported_content_type_is_415(
    api: ApiServer, http: httpx.AsyncClient, user: ParseUser
) -> None:
    response = await http.post(
        f"{api.url}/v1/memory/batch",
        content=b"memories=1",
        headers={"Content-Type": "application/x-www-form-urlencoded", **_auth(user)},
    )
    assert response.status_code == 415


# ---- status ------------------------------------------------------------------------------------------
async def test_status_of_own_batch_and_404_for_unknown_or_foreign(
    unpolled_api: ApiServer,
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    other_user: ParseUser,
) -> None:
    # No worker polls this API's task queue, so the batch stays exactly as submitted while it is read.
    secret = "whsec-do-not-leak-0123456789"
    accepted = await _post(
        http,
        unpolled_api,
        {"memories": chitchat_memories(3), "webhook_url": "http://127.0.0.1:9/h", "webhook_secret": secret},
        _auth(user),
    )
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["batch_id"]
    try:
        own = await http.get(f"{unpolled_api.url}/v1/batch/{batch_id}/status", headers=_auth(user))
        assert own.status_code == 200
        body = own.json()
        assert body == {
            "batch_id": batch_id,
            "status": "pending",
            "storage": accepted.json()["storage"],
            "total_memories": 3,
            "processed": 0,
            "successful": 0,
            "failed": 0,
            "progress_percent": 0,
            "started_at": None,
            "completed_at": None,
            "estimated_completion": None,
            "errors": [],
            "error_count": 0,
            "webhook_sent": False,
        }
        assert secret not in own.text

        foreign = await http.get(f"{unpolled_api.url}/v1/batch/{batch_id}/status", headers=_auth(other_user))
        unknown = await http.get(f"{unpolled_api.url}/v1/batch/{'0' * 32}/status", headers=_auth(other_user))
        odd = await http.get(f"{unpolled_api.url}/v1/batch/not%20an%20id/status", headers=_auth(other_user))
        for response in (foreign, unknown, odd):
            assert response.status_code == 404
            assert response.content == foreign.content == b'{"detail":"batch not found"}'
    finally:
        temporal = await connect(settings)
        await temporal.get_workflow_handle(accepted.json()["workflow_id"]).terminate(reason="test: unpolled")
        stored = await store.find_batch_request(parse, batch_id)
        assert stored is not None and stored.object_id is not None
        await store.delete_batch_request(parse, stored.object_id)


# ---- idempotency -------------------------------------------------------------------------------------
async def test_idempotency_key_twice_gives_one_batch(
    api: ApiServer, http: httpx.AsyncClient, parse: ParseClient, user: ParseUser, unique: str
) -> None:
    headers = {**_auth(user), "Idempotency-Key": f"key-{unique}"}
    first = await _post(http, api, {"memories": chitchat_memories(4)}, headers)
    second = await _post(http, api, {"memories": chitchat_memories(4)}, headers)
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    assert second.json() == first.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert await _requests_of(parse, user) == 1

    # Another key, or the same key of another user, is another batch.
    other_key = {**_auth(user), "Idempotency-Key": "other"}
    third = await _post(http, api, {"memories": chitchat_memories(4)}, other_key)
    assert third.json()["batch_id"] != first.json()["batch_id"]
    assert await _requests_of(parse, user) == 2


async def test_concurrent_identical_submits_make_one_batch_and_one_workflow(
    api: ApiServer, http: httpx.AsyncClient, parse: ParseClient, settings: Any, user: ParseUser, unique: str
) -> None:
    headers = {**_auth(user), "Idempotency-Key": f"race-{unique}"}
    body = {"memories": chitchat_memories(5)}
    responses = list(await asyncio.gather(*(_post(http, api, body, headers) for _ in range(6))))
    # A submit that finds the first one's start still in flight is told to retry (409); retried,
    # every one gets the same 202. Bounded by rounds, not by time.
    for _ in range(50):
        waiting = [i for i, r in enumerate(responses) if r.status_code == 409]
        if not waiting:
            break
        for i in waiting:
            assert responses[i].json() == {"detail": STILL_STARTING}
        await asyncio.sleep(0.1)
        for i in waiting:
            responses[i] = await _post(http, api, body, headers)
    assert [r.status_code for r in responses] == [202] * 6, [r.text for r in responses]
    assert len({json.dumps(r.json(), sort_keys=True) for r in responses}) == 1
    assert await _requests_of(parse, user) == 1

    temporal: Client = await connect(settings)
    workflow_id = responses[0].json()["workflow_id"]
    runs = [w async for w in temporal.list_workflows(f"WorkflowId = '{workflow_id}'")]
    # Visibility may lag a moment, but it can never show more than the one run that was started.
    for _ in range(50):
        if runs:
            break
        await asyncio.sleep(0.1)
        runs = [w async for w in temporal.list_workflows(f"WorkflowId = '{workflow_id}'")]
    assert len(runs) == 1


# ---- outages: 503, nothing left pending ----------------------------------------------------------------
async def test_temporal_down_is_503_and_leaves_no_request(
    no_temporal_api: ApiServer, http: httpx.AsyncClient, parse: ParseClient, user: ParseUser
) -> None:
    for _ in range(2):  # the first attempt and the remembered failure alike
        response = await _post(http, no_temporal_api, {"memories": chitchat_memories(3)}, _auth(user))
        assert response.status_code == 503, response.text
        assert response.json() == {"detail": WORKFLOWS_UNAVAILABLE}
        assert response.headers["Retry-After"]
    assert await _requests_of(parse, user) == 0
    # Reading status needs only Parse: still served.
    status = await http.get(f"{no_temporal_api.url}/v1/batch/{'1' * 32}/status", headers=_auth(user))
    assert status.status_code == 404


async def test_parse_down_is_503_not_401(
    no_parse_api: ApiServer, http: httpx.AsyncClient, user: ParseUser
) -> None:
    response = await _post(http, no_parse_api, {"memories": [GOOD]}, _auth(user))
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": "cannot validate the session right now; retry later"}


async def test_refused_workflow_start_deletes_the_stored_request_and_its_file(
    start_api: Callable[..., ApiServer],
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    set_flags: FlagSetter,
    unique: str,
) -> None:
    # Temporal answers but refuses the start (NOT_FOUND: no such namespace) after the batch was
    # stored, file uploaded: the request and its file must both go.
    refusing = start_api(TEMPORAL_NAMESPACE=f"no-such-namespace-{unique}")
    await set_flags(enabled=True, percent=100)
    key = f"refused-{unique}"
    batch_id = idempotent_batch_id(user.object_id, key)
    response = await _post(
        http, refusing, {"memories": chitchat_memories(5)}, {**_auth(user), "Idempotency-Key": key}
    )
    assert response.status_code == 502, response.text
    assert response.json() == {"detail": WORKFLOWS_REFUSED}
    assert await _requests_of(parse, user) == 0
    # The fs files adapter names uploads "<random>_<given name>" under the stack dir.
    assert list(settings.stack_dir.rglob(f"*_{batch_id}.json.gz")) == []


# ---- docs --------------------------------------------------------------------------------------------
async def test_openapi_documents_the_routes(api: ApiServer, http: httpx.AsyncClient) -> None:
    spec = (await http.get(f"{api.url}/openapi.json")).json()
    assert {"/v1/memory/batch", "/v1/batch/{batch_id}/status", "/healthz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/memory/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/BatchRequestIn"}
    assert "memories" in spec["components"]["schemas"]["BatchRequestIn"]["properties"]
    docs = await http.get(f"{api.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
