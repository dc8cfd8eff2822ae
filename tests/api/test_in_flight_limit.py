"""Abuse limit: a user with MAX_BATCHES_IN_FLIGHT batches pending or processing gets 429 + Retry-After.

A real API whose task queue no worker polls, so the started batches stay in flight until the test
finishes one of them in Parse.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx

from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.temporal.starter import workflow_id_for
from toolkit.validation.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer

CAP = 2


async def test_batches_past_the_cap_are_refused_with_429_until_one_finishes(
    start_api: Callable[..., ApiServer],
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    other_user: ParseUser,
    unique: str,
) -> None:
    api = start_api(
        MAX_BATCHES_IN_FLIGHT=str(CAP), TEMPORAL_TASK_QUEUE=f"unpolled-{datetime.now(UTC):%H%M%S%f}"
    )
    url = f"{api.url}/v1/memory/batch"
    body = {"memories": chitchat_memories(2)}
    mine = {"X-Parse-Session-Token": user.session_token}
    accepted = []
    for n in range(CAP):
        response = await http.post(url, json=body, headers={**mine, "Idempotency-Key": f"cap-{unique}-{n}"})
        assert response.status_code == 202, response.text
        accepted.append(response.json()["batch_id"])

    refused = await http.post(url, json=body, headers=mine)
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "10"
    assert refused.json() == {
        "detail": f"too many batches in flight: {CAP}; the limit is {CAP} per user. "
        "Retry once one of them has finished."
    }
    pointer = {"__type": "Pointer", "className": "_User", "objectId": user.object_id}
    assert await parse.count(BATCH_MEMORY_REQUEST, {"user": pointer}, master=True) == CAP, "nothing stored"

    # Asking again for a batch already in flight is a replay, not a new batch: never refused.
    replay = await http.post(url, json=body, headers={**mine, "Idempotency-Key": f"cap-{unique}-0"})
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    # The cap is per user.
    theirs = await http.post(url, json=body, headers={"X-Parse-Session-Token": other_user.session_token})
    assert theirs.status_code == 202, theirs.text
    accepted.append(theirs.json()["batch_id"])

    finished = await store.find_batch_request(parse, accepted[0])
    assert finished is not None and finished.object_id is not None
    await store.update_batch_request_status(parse, finished.object_id, "completed")
    again = await http.post(url, json=body, headers=mine)
    assert again.status_code == 202, again.text
    accepted.append(again.json()["batch_id"])

    temporal = await connect(settings)
    for batch_id in accepted:
        await temporal.get_workflow_handle(workflow_id_for(batch_id)).terminate(reason="test: nobody polls")
