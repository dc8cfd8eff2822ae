"""The client side of the batch API, used by ``toolkit submit``/``toolkit status``, notebooks and load tests.

Everything goes through HTTP to ``settings.api_url``, like any other client. The local user
``toolkit-local`` is signed up on first use; its password (and its last session token, so repeated
commands do not pile up sessions in Parse) are kept in ``<stack_dir>/local-user.json``, mode 600.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from toolkit.parse import ParseClient
from toolkit.parse.errors import ParseError
from toolkit.parse.models import FINISHED_STATUSES, MemoryItem
from toolkit.parse.users import log_in_or_sign_up
from toolkit.settings import Settings

LOCAL_USERNAME = "toolkit-local"
# Parse's "account already exists for this username".
USERNAME_TAKEN = 202
LOCAL_USER_FILE = "local-user.json"
HTTP_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.5
MAX_POLL_INTERVAL_S = 5.0

ProgressCallback = Callable[[Mapping[str, Any]], None]


class ApiCallFailed(Exception):
    """The API answered with an error status; ``detail`` is its explanation."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class LocalUserLost(Exception):
    """The local user exists in Parse, but its password file is gone or differs."""


class BatchWaitTimeout(TimeoutError):
    def __init__(self, batch_id: str, timeout_s: float, last: Mapping[str, Any]) -> None:
        super().__init__(
            f"batch {batch_id} not finished after {timeout_s:g} s "
            f"(status {last.get('status')}, {last.get('processed')}/{last.get('total_memories')})"
        )
        self.last = dict(last)


def _auth(session_token: str) -> dict[str, str]:
    return {"X-Parse-Session-Token": session_token}


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:500]}
    if response.status_code >= 400:
        detail = body.get("detail", body) if isinstance(body, dict) else body
        raise ApiCallFailed(response.status_code, detail)
    return body


def _plain_memory(memory: MemoryItem | Mapping[str, Any]) -> dict[str, Any]:
    return memory.model_dump(mode="json") if isinstance(memory, MemoryItem) else dict(memory)


def submit_batch(
    settings: Settings,
    *,
    memories: Sequence[MemoryItem | Mapping[str, Any]],
    session_token: str,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> dict[str, Any]:
    """``POST /v1/memory/batch``; returns the 202 answer, raises :class:`ApiCallFailed` otherwise."""
    body: dict[str, Any] = {"memories": [_plain_memory(m) for m in memories]}
    if webhook_url:
        body["webhook_url"] = webhook_url
    if webhook_secret:
        body["webhook_secret"] = webhook_secret
    headers = _auth(session_token)
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    with httpx.Client(base_url=settings.api_url, timeout=HTTP_TIMEOUT_S) as http:
        return _answer(http.post("/v1/memory/batch", json=body, headers=headers))


def get_status(settings: Settings, batch_id: str, session_token: str) -> dict[str, Any]:
    with httpx.Client(base_url=settings.api_url, timeout=HTTP_TIMEOUT_S) as http:
        return _answer(http.get(f"/v1/batch/{batch_id}/status", headers=_auth(session_token)))


def wait_for_batch(
    settings: Settings,
    batch_id: str,
    session_token: str,
    *,
    timeout_s: float,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Poll the status until the batch finishes; return the final status or raise :class:`BatchWaitTimeout`.

    Polling starts fast and backs off to :data:`MAX_POLL_INTERVAL_S` while nothing changes.
    """
    deadline = time.monotonic() + timeout_s
    interval = POLL_INTERVAL_S
    last_processed = -1
    with httpx.Client(base_url=settings.api_url, timeout=HTTP_TIMEOUT_S) as http:
        while True:
            status = _answer(http.get(f"/v1/batch/{batch_id}/status", headers=_auth(session_token)))
            if on_progress is not None:
                on_progress(status)
            if status["status"] in FINISHED_STATUSES:
                return status
            if time.monotonic() >= deadline:
                raise BatchWaitTimeout(batch_id, timeout_s, status)
            if status["processed"] != last_processed:
                last_processed, interval = status["processed"], POLL_INTERVAL_S
            else:
                interval = min(interval * 1.5, MAX_POLL_INTERVAL_S)
            time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


# ---- the local user --------------------------------------------------------------------------------
def _write_private(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON readable by the owner only (created 600, never world-readable in between)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(dict(data), handle)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _read_local_user(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # someone loosened it: the file holds a password
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


async def _session_is_valid(parse: ParseClient, token: str) -> bool:
    try:
        await parse.request("GET", "users/me", session_token=token)
    except ParseError:
        return False
    return True


async def _local_session(settings: Settings) -> str:
    path = settings.stack_dir / LOCAL_USER_FILE
    saved = _read_local_user(path)
    username = saved.get("username") or LOCAL_USERNAME
    password = saved.get("password") or secrets.token_urlsafe(24)
    async with ParseClient(settings) as parse:
        token = saved.get("session_token")
        if token and await _session_is_valid(parse, token):
            return str(token)
        if not saved.get("password"):
            # Persist the password before signing up: a crash in between must not lock the user out.
            _write_private(path, {"username": username, "password": password})
        try:
            user = await log_in_or_sign_up(parse, username, password)
        except ParseError as exc:
            if exc.code != USERNAME_TAKEN:
                raise
            raise LocalUserLost(
                f"Parse already has a user {username!r} but {path} does not hold its password; "
                f"restore that file, or delete the user in Parse (or name another user in the file)"
            ) from exc
    _write_private(path, {"username": username, "password": password, "session_token": user.session_token})
    return user.session_token


def local_session(settings: Settings) -> str:
    """A session token of the local user ``toolkit-local`` (signed up on first use).

    Callable from plain code and from a notebook, whose event loop is already running (then the
    sign-in runs on a helper thread with its own loop).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_local_session(settings))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _local_session(settings)).result()
