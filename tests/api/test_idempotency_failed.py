"""What an Idempotency-Key of a failed or discarded batch answers (README, "Idempotency-Key").

- A batch that was started and finished ``failed`` is replayed as-is: the same 202, and its status
  says ``failed``. The key does not start a second batch behind the caller's back.
- A submission discarded before its start was confirmed frees the key, even when its workflow id was
  taken (Temporal never reuses one): the next submission with the key gets a new batch. Before the fix
  it answered 409 "retry with a new key" on every retry, forever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from toolkit.api.idempotency import idempotent_batch_id
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.temporal.starter import workflow_id_for
from toolkit.temporal.workflows import NEW_WORKFLOW
from toolkit.validation.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer


def _keyed(user: ParseUser, key: str) -> dict[str, str]:
    return {"X-Parse-Session-Token": user.session_token, "Idempotency-Key": key}


async def test_key_of_a_discarded_submission_whose_workflow_id_is_taken_starts_a_new_batch(
    unpolled_api: ApiServer,
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    unique: str,
) -> None:
    key = f"taken-{unique}"
    first_id = idempotent_batch_id(user.object_id, key)
    temporal = await connect(settings)
    # What a discarded submission leaves in Temporal: its workflow id, used (and now closed), with
    # no request in Parse carrying the key.
    taken = await temporal.start_workflow(
        NEW_WORKFLOW,
        {"request_id": f"gone{unique}", "batch_id": first_id},
        id=workflow_id_for(first_id),
        task_queue=f"nobody-{unique}",
    )
    await taken.terminate(reason="test: a discarded submission's workflow")
    body = {"memories": chitchat_memories(3)}

    accepted = await http.post(f"{unpolled_api.url}/v1/memory/batch", json=body, headers=_keyed(user, key))
    assert accepted.status_code == 202, accepted.text
    assert "Idempotent-Replayed" not in accepted.headers
    batch_id = accepted.json()["batch_id"]
    assert batch_id == idempotent_batch_id(user.object_id, key, 1)
    stored = await store.find_by_idempotency_key(parse, user.object_id, key)
    assert stored is not None and stored.batch_id == batch_id
    assert stored.workflow_id == workflow_id_for(batch_id)

    replay = await http.post(f"{unpolled_api.url}/v1/memory/batch", json=body, headers=_keyed(user, key))
    assert replay.status_code == 202, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json() == accepted.json()
    await temporal.get_workflow_handle(workflow_id_for(batch_id)).terminate(reason="test")


async def test_key_of_a_failed_batch_replays_it_as_is(
    unpolled_api: ApiServer,
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    unique: str,
) -> None:
    key = f"failed-{unique}"
    body = {"memories": chitchat_memories(3)}
    accepted = await http.post(f"{unpolled_api.url}/v1/memory/batch", json=body, headers=_keyed(user, key))
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["batch_id"]
    temporal = await connect(settings)
    await temporal.get_workflow_handle(workflow_id_for(batch_id)).terminate(reason="test")
    stored = await store.find_batch_request(parse, batch_id)
    assert stored is not None and stored.object_id is not None
    await store.update_batch_request_status(parse, stored.object_id, "failed")

    again = await http.post(f"{unpolled_api.url}/v1/memory/batch", json=body, headers=_keyed(user, key))
    assert again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == accepted.json()
    status = await http.get(
        f"{unpolled_api.url}{accepted.json()['status_url']}",
        headers={"X-Parse-Session-Token": user.session_token},
    )
    assert status.json()["status"] == "failed"
    pointer = {"__type": "Pointer", "className": "_User", "objectId": user.object_id}
    assert await parse.count("BatchMemoryRequest", {"user": pointer}, master=True) == 1, "nothing new stored"
