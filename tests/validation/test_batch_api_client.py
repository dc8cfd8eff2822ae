"""The client side: ``toolkit.validation.batch_api`` functions against a real API process, and the local user
file."""

from __future__ import annotations

import argparse
import asyncio
import json
import stat
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from toolkit.cli.submit import status_command
from toolkit.parse import ParseClient
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.validation.batch_api import (
    ApiCallFailed,
    BatchWaitTimeout,
    LocalUserLost,
    get_status,
    local_session,
    submit_batch,
    wait_for_batch,
)
from toolkit.validation.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer


async def test_local_session_signs_up_once_and_keeps_the_password_private(
    settings: Settings, parse: ParseClient, local_user_settings: Callable[[Settings], Settings]
) -> None:
    local = local_user_settings(settings)
    path = local.stack_dir / "local-user.json"
    token = local_session(local)  # called with a running event loop, as from a notebook
    me = await parse.request("GET", "users/me", session_token=token)
    saved = json.loads(path.read_text())
    assert me["username"] == saved["username"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert saved["password"] and saved["session_token"] == token

    # The saved session is reused while valid: no new session per command.
    assert local_session(local) == token
    # A revoked or bogus session makes it log in again with the kept password.
    path.write_text(json.dumps({**saved, "session_token": "r:revoked"}))
    path.chmod(0o644)
    again = local_session(local)
    assert again != "r:revoked"
    assert (await parse.request("GET", "users/me", session_token=again))["objectId"] == me["objectId"]
    assert json.loads(path.read_text())["password"] == saved["password"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_lost_password_file_gives_a_clear_error(
    settings: Settings, local_user_settings: Callable[[Settings], Settings]
) -> None:
    local = local_user_settings(settings)
    path = local.stack_dir / "local-user.json"
    local_session(local)
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({"username": saved["username"]}))  # password gone, user still in Parse
    with pytest.raises(LocalUserLost, match="does not hold its password"):
        local_session(local)


async def test_submit_and_status_functions(api: ApiServer, user: ParseUser, unique: str) -> None:
    key = f"client-{unique}"
    first = submit_batch(api.settings, memories=chitchat_memories(3), session_token=user.session_token,
                         idempotency_key=key)  # fmt: skip
    again = submit_batch(api.settings, memories=chitchat_memories(3), session_token=user.session_token,
                         idempotency_key=key)  # fmt: skip
    assert again == first and first["status"] == "pending" and first["total_memories"] == 3
    status = get_status(api.settings, first["batch_id"], user.session_token)
    assert status["batch_id"] == first["batch_id"] and status["total_memories"] == 3


async def test_api_errors_become_api_call_failed(api: ApiServer, user: ParseUser) -> None:
    with pytest.raises(ApiCallFailed) as unauthorized:
        submit_batch(api.settings, memories=chitchat_memories(1), session_token="r:nope")
    assert unauthorized.value.status_code == 401
    with pytest.raises(ApiCallFailed) as invalid:
        submit_batch(api.settings, memories=[], session_token=user.session_token)
    assert invalid.value.status_code == 422
    assert invalid.value.detail[0]["loc"] == ["body", "memories"]
    with pytest.raises(ApiCallFailed) as missing:
        get_status(api.settings, uuid.uuid4().hex, user.session_token)
    assert missing.value.status_code == 404


async def _terminate(settings: Settings, workflow_id: str) -> None:
    temporal = await connect(settings)
    await temporal.get_workflow_handle(workflow_id).terminate(reason="test: nobody polls its task queue")


def test_wait_gives_up_after_its_timeout(start_api: Callable[..., ApiServer], user: ParseUser) -> None:
    # Nobody polls this task queue, so the batch stays pending.
    idle = start_api(TEMPORAL_TASK_QUEUE=f"nobody-{uuid.uuid4().hex[:8]}")
    accepted = submit_batch(idle.settings, memories=chitchat_memories(2), session_token=user.session_token)
    seen: list[dict[str, object]] = []
    try:
        with pytest.raises(BatchWaitTimeout) as timeout:
            wait_for_batch(
                idle.settings,
                accepted["batch_id"],
                user.session_token,
                timeout_s=1.0,
                on_progress=seen.append,
            )
    finally:
        # Its workflow would stay Running for ever on the shared stack (and fail the runbook notebook's
        # "no legacy workflow running" check later in the suite).
        asyncio.run(_terminate(idle.settings, accepted["workflow_id"]))
    assert timeout.value.last["status"] == "pending"
    assert seen and all(s["status"] == "pending" for s in seen)


def test_status_command_prints_404_for_an_unknown_batch(
    api: ApiServer,
    local_user_settings: Callable[[Settings], Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    local = local_user_settings(api.settings)
    args = argparse.Namespace(batch_id=uuid.uuid4().hex, wait=False, timeout=1.0)
    assert status_command(args, local) == 1
    assert "HTTP 404: batch not found" in capsys.readouterr().err
