"""A request that could not be deleted when its start failed must not shadow the batch that replaces it.

The scenario of issue 16: a submit with an Idempotency-Key stores its request, the start fails for
certain, and deleting the request fails too. The request used to be marked ``failed`` and lose its key
but keep its batch id; the retry with the same key stores the same batch id (the key's generation 0
never started), and ``find_batch_request`` (oldest first) then answered ``/status`` and ``/errors``
with the old failed request while the new batch ran.

Parse's DELETE is made to fail by wrapping the real transport: a real server does not fail one delete
on demand. Everything else is real (Parse, the API answering the owner).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from toolkit.api.idempotency import idempotent_batch_id
from toolkit.api.start_settling import discard_unstarted
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.models import MemoryItem
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.validation.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer


class _RequestDeletesFail(httpx.AsyncBaseTransport):
    """The real transport, except that deleting a BatchMemoryRequest answers 500."""

    def __init__(self) -> None:
        self.real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE" and f"/classes/{BATCH_MEMORY_REQUEST}/" in request.url.path:
            return httpx.Response(500, json={"code": 1, "error": "injected: delete failed"})
        return await self.real.handle_async_request(request)

    async def aclose(self) -> None:
        await self.real.aclose()


async def test_a_request_that_could_not_be_deleted_frees_its_batch_id(
    api: ApiServer,
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    unique: str,
) -> None:
    key = f"stale-{unique}"
    batch_id = idempotent_batch_id(user.object_id, key)
    submission = store.Submission(user.object_id, idempotency_key=key)
    memories = [MemoryItem.model_validate(m) for m in chitchat_memories(3)]
    old = await store.create_batch_memory_request_in_parse(
        parse, settings, batch_id=batch_id, submission=submission, memories=memories
    )
    async with ParseClient(settings, transport=_RequestDeletesFail(), retry_delays_s=()) as flaky:
        await discard_unstarted(flaky, old, "workflow not started: RPCError")
    retired = await parse.get_object(BATCH_MEMORY_REQUEST, old, master=True)
    assert (retired["status"], retired["batchId"]) == ("failed", f"discarded-{old}")
    assert "idempotencyKey" not in retired

    # The retry with the same key stores the same batch id, and its batch runs.
    new = await store.create_batch_memory_request_in_parse(
        parse, settings, batch_id=batch_id, submission=submission, memories=memories
    )
    await store.update_batch_request_status(parse, new, "processing")

    found = await store.find_batch_request(parse, batch_id, session_token=user.session_token)
    assert found is not None and (found.object_id, found.status) == (new, "processing")
    by_key = await store.find_by_idempotency_key(parse, user.object_id, key)
    assert by_key is not None and by_key.object_id == new
    headers = {"X-Parse-Session-Token": user.session_token}
    status = await http.get(f"{api.url}/v1/batch/{batch_id}/status", headers=headers)
    errors = await http.get(f"{api.url}/v1/batch/{batch_id}/errors", headers=headers)
    assert (status.status_code, status.json()["status"], status.json()["errors"]) == (200, "processing", [])
    assert (errors.status_code, errors.json()["error_count"], errors.json()["errors"]) == (200, 0, [])
    for request_id in (old, new):
        await store.delete_batch_request(parse, request_id)
