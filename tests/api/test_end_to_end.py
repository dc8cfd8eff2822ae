"""Batches through the API to ``completed``: API process → Parse → Temporal → a real worker → status.

The worker runs in the test process on a task queue of its own (the API process is pointed at it),
so the test always exercises the current worker code, whatever the shared stack's worker runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import pytest

from toolkit.cli.submit import submit_command
from toolkit.parse import ParseClient
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.temporal.worker import build_worker
from toolkit.validation.batch_api import submit_batch, wait_for_batch
from toolkit.validation.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer, FlagSetter

# A wait bound, not a timing assertion: a batch of 40 takes a few seconds on the local stack.
WAIT_S = 180.0


@pytest.fixture(scope="module")
def queue() -> str:
    return f"api-e2e-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def e2e_api(start_api: Callable[..., ApiServer], queue: str) -> ApiServer:
    return start_api(TEMPORAL_TASK_QUEUE=queue, WEBHOOK_ALLOW_PRIVATE="1")


@pytest.fixture(scope="module")
async def worker(settings: Settings, queue: str) -> AsyncIterator[None]:
    temporal = await connect(settings)
    worker_settings = dataclasses.replace(settings, temporal_task_queue=queue, webhook_allow_private=True)
    async with ParseClient(worker_settings) as parse, build_worker(temporal, worker_settings, parse):
        yield


async def test_both_paths_complete_and_report_progress(
    e2e_api: ApiServer, worker: None, user: ParseUser, set_flags: FlagSetter
) -> None:
    finals: dict[str, dict[str, Any]] = {}
    for storage, enabled in (("reference", True), ("legacy", False)):
        await set_flags(enabled=enabled, percent=100)
        accepted = await asyncio.to_thread(
            submit_batch, e2e_api.settings, memories=chitchat_memories(40), session_token=user.session_token
        )
        assert accepted["storage"] == storage
        seen: list[dict[str, Any]] = []
        finals[storage] = await asyncio.to_thread(
            wait_for_batch,
            e2e_api.settings,
            accepted["batch_id"],
            user.session_token,
            timeout_s=WAIT_S,
            on_progress=seen.append,
        )
        assert seen and seen[-1] == finals[storage]

    for storage, final in finals.items():
        assert final["storage"] == storage
        assert final["status"] == "completed", final
        counts = (final["total_memories"], final["processed"], final["successful"], final["failed"])
        assert counts == (40, 40, 40, 0)
        assert final["progress_percent"] == 100.0
        assert final["started_at"] and final["completed_at"] and final["completed_at"] >= final["started_at"]
        assert final["estimated_completion"] == final["completed_at"]
        assert final["errors"] == [] and final["error_count"] == 0
    assert set(finals["reference"]) == set(finals["legacy"])


async def test_submit_command_waits_and_prints_the_final_status(
    e2e_api: ApiServer,
    worker: None,
    local_user_settings: Callable[[Settings], Settings],
    set_flags: FlagSetter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = local_user_settings(e2e_api.settings)
    await set_flags(enabled=True, percent=100)
    args = argparse.Namespace(
        memories=25, workload="synthetic", wait=True, timeout=WAIT_S, idempotency_key=None, webhook_url=None
    )
    assert await asyncio.to_thread(submit_command, args, settings) == 0
    captured = capsys.readouterr()
    # Two JSON documents: the 202 answer, then the final status.
    decoder = json.JSONDecoder()
    accepted, end = decoder.raw_decode(captured.out)
    final, _ = decoder.raw_decode(captured.out[end:].lstrip())
    assert accepted["total_memories"] == 25 and accepted["storage"] == "reference"
    assert final["batch_id"] == accepted["batch_id"] and final["status"] == "completed"
    assert "100.0% 25/25 completed" in captured.err
