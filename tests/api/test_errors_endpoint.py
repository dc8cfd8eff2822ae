"""GET /v1/batch/{batch_id}/errors pages through every per-memory error; status stays bounded."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx

from toolkit.api.schemas import ERRORS_PAGE_MAX
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.models import BatchError
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.temporal.starter import workflow_id_for
from toolkit.validation.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer

FAILED = 230


async def test_errors_are_paged_by_index_and_status_shows_a_bounded_sample(
    unpolled_api: ApiServer,
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    other_user: ParseUser,
) -> None:
    headers = {"X-Parse-Session-Token": user.session_token}
    accepted = await http.post(
        f"{unpolled_api.url}/v1/memory/batch", json={"memories": chitchat_memories(3)}, headers=headers
    )
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["batch_id"]
    await (await connect(settings)).get_workflow_handle(workflow_id_for(batch_id)).terminate(reason="test")
    request = await store.find_batch_request(parse, batch_id)
    assert request is not None and request.object_id is not None
    now = datetime.now(UTC)
    for start in range(0, FAILED, 50):  # what a worker records, chunk by chunk
        await store.append_batch_request_errors(
            parse,
            request.object_id,
            [
                BatchError(index=i, error=f"failed {i}", timestamp=now)
                for i in range(start, min(start + 50, FAILED))
            ],
        )
    url = f"{unpolled_api.url}/v1/batch/{batch_id}/errors"

    first = await http.get(url, headers=headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["batch_id"], body["error_count"], body["offset"], body["limit"]) == (
        batch_id,
        FAILED,
        0,
        100,
    )
    assert [e["index"] for e in body["errors"]] == list(range(100))
    assert body["errors"][7]["error"] == "failed 7"

    indexes: list[int] = []
    for offset in range(0, FAILED + 100, 100):
        page = await http.get(url, params={"offset": offset, "limit": 100}, headers=headers)
        indexes += [e["index"] for e in page.json()["errors"]]
    assert indexes == list(range(FAILED))
    last = await http.get(url, params={"offset": 200, "limit": 100}, headers=headers)
    assert len(last.json()["errors"]) == FAILED - 200

    status = await http.get(f"{unpolled_api.url}/v1/batch/{batch_id}/status", headers=headers)
    assert status.json()["error_count"] == FAILED
    assert [e["index"] for e in status.json()["errors"]] == list(range(store.MAX_STORED_ERRORS))

    foreign = await http.get(url, headers={"X-Parse-Session-Token": other_user.session_token})
    assert foreign.status_code == 404 and foreign.json() == {"detail": "batch not found"}
    assert (await http.get(url)).status_code == 401
    for bad in ({"limit": 0}, {"limit": ERRORS_PAGE_MAX + 1}, {"offset": -1}, {"limit": "x"}):
        assert (await http.get(url, params=bad, headers=headers)).status_code == 422, bad
