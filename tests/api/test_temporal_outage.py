"""Temporal dies under a running API, then comes back: 503, then 202 again, and nothing left pending."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from toolkit.api.errors import START_UNCONFIRMED
from toolkit.parse import ParseClient
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.parse.users import ParseUser
from toolkit.stack._process import stop_pid
from toolkit.stack.temporal_server import TemporalServer
from toolkit.validation.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer


async def _requests(parse: ParseClient, user: ParseUser) -> list[dict]:
    pointer = {"__type": "Pointer", "className": "_User", "objectId": user.object_id}
    return await parse.find(BATCH_MEMORY_REQUEST, {"user": pointer}, master=True)


async def test_submit_is_503_while_temporal_is_down_and_works_again_once_it_is_back(
    own_temporal: TemporalServer,
    start_api: Callable[..., ApiServer],
    http: httpx.AsyncClient,
    parse: ParseClient,
    user: ParseUser,
) -> None:
    # A short start timeout: the API gives up on a start after 2 s, and an unconfirmed one is an
    # orphan 4 s after Temporal can be asked again.
    api = start_api(TEMPORAL_ADDRESS=own_temporal.url, API_START_TIMEOUT_S="2")
    headers = {"X-Parse-Session-Token": user.session_token}
    body = {"memories": chitchat_memories(5)}

    first = await http.post(f"{api.url}/v1/memory/batch", json=body, headers=headers)
    assert first.status_code == 202, first.text

    stop_pid(own_temporal.pid())
    down = await http.post(f"{api.url}/v1/memory/batch", json=body, headers=headers)
    assert down.status_code == 503, down.text
    # The API cannot tell a start that never left from one whose answer was lost: it keeps the
    # request (a landed start must find it) and says so, naming nothing internal.
    assert down.json() == {"detail": START_UNCONFIRMED}
    kept = [r for r in await _requests(parse, user) if r["batchId"] != first.json()["batch_id"]]
    assert [(r["status"], r.get("workflowRunId")) for r in kept] == [("pending", None)]

    await asyncio.to_thread(own_temporal.start)  # same port, same SQLite file; blocking health checks
    for _ in range(40):  # the API reconnects lazily, at most once a second
        again = await http.post(f"{api.url}/v1/memory/batch", json=body, headers=headers)
        if again.status_code == 202:
            break
        assert again.status_code == 503, again.text
        await asyncio.sleep(0.5)
    assert again.status_code == 202, "the API did not recover once Temporal was back"
    # Once Temporal answers, the API settles what it kept: those starts never landed, so their
    # requests go, and nothing is left pending without a workflow.
    expected = sorted([first.json()["batch_id"], again.json()["batch_id"]])
    for _ in range(150):
        stored = await _requests(parse, user)
        if sorted(r["batchId"] for r in stored) == expected:
            break
        await asyncio.sleep(0.2)
    assert sorted(r["batchId"] for r in stored) == expected
    assert all(r["status"] == "pending" and r.get("workflowId") for r in stored)
