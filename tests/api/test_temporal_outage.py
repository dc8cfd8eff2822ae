"""Temporal dies under a running API, then comes back: 503, then 202 again, and nothing left pending."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from tests.fixtures.api_server import FAULT_START_TIMEOUT_S
from tests.fixtures.worker_process import wait_until
from toolkit.api.errors import START_UNCONFIRMED
from toolkit.api.idempotency import idempotent_batch_id
from toolkit.parse import ParseClient
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.parse.users import ParseUser
from toolkit.stack._process import stop_pid
from toolkit.stack.temporal_server import TemporalServer
from toolkit.validation.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer


async def _requests(parse: ParseClient, user: ParseUser) -> dict[str, dict]:
    pointer = {"__type": "Pointer", "className": "_User", "objectId": user.object_id}
    return {r["batchId"]: r for r in await parse.find(BATCH_MEMORY_REQUEST, {"user": pointer}, master=True)}


async def test_submit_is_503_while_temporal_is_down_and_works_again_once_it_is_back(
    own_temporal: TemporalServer,
    start_api: Callable[..., ApiServer],
    http: httpx.AsyncClient,
    parse: ParseClient,
    user: ParseUser,
) -> None:
    api = start_api(TEMPORAL_ADDRESS=own_temporal.url, API_START_TIMEOUT_S=str(FAULT_START_TIMEOUT_S))
    body = {"memories": chitchat_memories(5)}

    async def submit(key: str) -> httpx.Response:
        # Keyed, so the test knows every batch id, answered or not.
        headers = {"X-Parse-Session-Token": user.session_token, "Idempotency-Key": key}
        return await http.post(f"{api.url}/v1/memory/batch", json=body, headers=headers)

    first = await submit("first")
    assert first.status_code == 202, first.text

    stop_pid(own_temporal.pid())
    down = await submit("down")
    assert down.status_code == 503, down.text
    # The API cannot tell a start that never left from one whose answer was lost: it keeps the
    # request (a landed start must find it) and says so, naming nothing internal.
    assert down.json() == {"detail": START_UNCONFIRMED}
    down_id = idempotent_batch_id(user.object_id, "down")
    kept = await _requests(parse, user)
    assert (kept[down_id]["status"], kept[down_id].get("workflowRunId")) == ("pending", None)

    await asyncio.to_thread(own_temporal.start)  # same port, same SQLite file; blocking health checks
    accepted = {first.json()["batch_id"]}
    unanswered: set[str] = set()
    for attempt in range(40):  # the API reconnects lazily, at most once a second
        key = f"again-{attempt}"
        again = await submit(key)
        if again.status_code == 202:
            accepted.add(again.json()["batch_id"])
            break
        assert again.status_code == 503, again.text
        unanswered.add(idempotent_batch_id(user.object_id, key))
        await asyncio.sleep(0.5)
    assert again.status_code == 202, "the API did not recover once Temporal was back"

    # Once Temporal answers, the API settles what it kept: a start that never landed (the one sent
    # while Temporal was dead) loses its request once no start can still be in flight (twice the
    # start timeout); one that did land gets its run recorded. Nothing stays pending without a run.
    async def settled() -> bool:
        stored = await _requests(parse, user)
        return down_id not in stored and all(
            stored[batch_id].get("workflowRunId") for batch_id in set(stored) & unanswered
        )

    await wait_until(settled, 2 * FAULT_START_TIMEOUT_S + 60, "the API to settle the starts it kept")
    stored = await _requests(parse, user)
    assert accepted <= set(stored) <= accepted | unanswered
    assert all(r["status"] == "pending" and r.get("workflowId") for r in stored.values())
