"""A start that lands while its answer is lost, and Temporal cannot be asked: the request is never lost.

A real TCP proxy sits between the API and a Temporal dev server of the test's own. Switched to
``drop_replies``, it lets the start reach Temporal (the workflow is created) but swallows every
answer, so the start times out and so does the API's describe. Before the fix, the API then
deleted the request under the running workflow, which could only fail ("request not found").
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from tests.fixtures.api_server import FAULT_START_TIMEOUT_S
from tests.fixtures.worker_process import wait_until
from toolkit.api.errors import START_UNCONFIRMED
from toolkit.api.idempotency import idempotent_batch_id
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.schema import MEMORY
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.stack.temporal_server import TemporalServer
from toolkit.temporal.client import connect
from toolkit.temporal.starter import workflow_id_for
from toolkit.temporal.worker import build_worker
from toolkit.testing.tcp_proxy import TcpProxy
from toolkit.validation.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer

MEMORIES = 7


async def test_a_start_that_landed_keeps_its_request_when_temporal_cannot_confirm_it(
    own_temporal: TemporalServer,
    start_api: Callable[..., ApiServer],
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    unique: str,
) -> None:
    queue = f"unconfirmed-{unique}"
    headers = {"X-Parse-Session-Token": user.session_token}
    key = f"unconfirmed-{unique}"
    batch_id = idempotent_batch_id(user.object_id, key)
    direct = await connect(dataclasses.replace(settings, temporal_address=own_temporal.url))

    with TcpProxy("127.0.0.1", own_temporal.port) as proxy:
        # The start timeout bounds the lost answer (the start hangs until it), never a healthy start.
        api = start_api(
            TEMPORAL_ADDRESS=proxy.address,
            TEMPORAL_TASK_QUEUE=queue,
            API_START_TIMEOUT_S=str(FAULT_START_TIMEOUT_S),
        )
        # Through the proxy while it forwards: the API's Temporal connection is up.
        warm = await http.post(
            f"{api.url}/v1/memory/batch", json={"memories": chitchat_memories(2)}, headers=headers
        )
        assert warm.status_code == 202, warm.text

        proxy.set_mode("drop_replies")
        lost = await http.post(
            f"{api.url}/v1/memory/batch",
            json={"memories": chitchat_memories(MEMORIES)},
            headers={**headers, "Idempotency-Key": key},
        )
        assert lost.status_code == 503, lost.text
        assert lost.json() == {"detail": START_UNCONFIRMED}
        assert proxy.address not in lost.text and str(own_temporal.port) not in lost.text

        # The start did land, and its request is still there for it.
        description = await direct.get_workflow_handle(workflow_id_for(batch_id)).describe()
        assert description.id == workflow_id_for(batch_id)
        kept = await store.find_by_idempotency_key(parse, user.object_id, key)
        assert kept is not None, "the request of a workflow that started was deleted"
        assert kept.batch_id == batch_id and kept.status == "pending"

        proxy.set_mode("forward")

        # Once Temporal answers again, the API records the workflow on the request by itself.
        async def run_recorded() -> bool:
            found = await store.find_by_idempotency_key(parse, user.object_id, key)
            return found is not None and bool(found.workflow_run_id)

        await wait_until(run_recorded, 60, "the API to record the run of the start it kept")
        kept = await store.find_by_idempotency_key(parse, user.object_id, key)
        assert kept is not None and kept.workflow_id == workflow_id_for(batch_id)
        assert kept.workflow_run_id == description.run_id

        # The client's retry with its key gets the batch that is running, not a second one.
        retry = await http.post(
            f"{api.url}/v1/memory/batch",
            json={"memories": chitchat_memories(MEMORIES)},
            headers={**headers, "Idempotency-Key": key},
        )
        assert retry.status_code == 202, retry.text
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.json()["batch_id"] == batch_id and retry.json()["total_memories"] == MEMORIES

    # And the batch runs to the end with every memory written.
    async with build_worker(direct, settings, parse, task_queue=queue):
        await asyncio.wait_for(direct.get_workflow_handle(workflow_id_for(batch_id)).result(), 60)
    done = await store.find_batch_request(parse, batch_id)
    assert done is not None and done.status == "completed" and done.success_count == MEMORIES
    assert await parse.count(MEMORY, {"batchId": batch_id}, master=True) == MEMORIES
