"""Temporal dies under a running API, then comes back: 503 with nothing left pending, then 202 again."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from toolkit.parse import ParseClient
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.settings import Settings
from toolkit.stack._process import stop_pid
from toolkit.stack.temporal import TemporalServer
from toolkit.testing.ports import free_port
from toolkit.users import ParseUser
from toolkit.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.api.conftest import ApiServer


@pytest.fixture
def own_temporal(settings: Settings, tmp_path: Path) -> Iterator[TemporalServer]:
    """A Temporal dev server of this test's own (SQLite file under tmp_path), so it can be stopped."""
    server = TemporalServer(
        dataclasses.replace(
            settings, stack_dir=tmp_path / "stack", temporal_port=free_port(), temporal_ui_port=free_port()
        )
    )
    server.start()
    yield server
    if (pid := server.pid()) is not None:
        stop_pid(pid)


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
    api = start_api(TEMPORAL_ADDRESS=own_temporal.url)
    headers = {"X-Parse-Session-Token": user.session_token}
    body = {"memories": chitchat_memories(5)}

    first = await http.post(f"{api.url}/v1/memory/batch", json=body, headers=headers)
    assert first.status_code == 202, first.text

    stop_pid(own_temporal.pid())
    down = await http.post(f"{api.url}/v1/memory/batch", json=body, headers=headers)
    assert down.status_code == 503, down.text
    assert "Temporal" in down.json()["detail"]
    assert len(await _requests(parse, user)) == 1, "the refused submit must leave nothing behind"

    await asyncio.to_thread(own_temporal.start)  # same port, same SQLite file; blocking health checks
    for _ in range(40):  # the API reconnects lazily, at most once a second
        again = await http.post(f"{api.url}/v1/memory/batch", json=body, headers=headers)
        if again.status_code == 202:
            break
        assert again.status_code == 503, again.text
        await asyncio.sleep(0.5)
    assert again.status_code == 202, "the API did not recover once Temporal was back"
    stored = await _requests(parse, user)
    assert sorted(r["batchId"] for r in stored) == sorted(
        [first.json()["batch_id"], again.json()["batch_id"]]
    )
    assert all(r["status"] == "pending" and r.get("workflowId") for r in stored)
