"""Fixtures for the API tests: real API processes on free ports, running the code under test.

Each server is ``python -m toolkit api`` (what the stack runs) with its settings changed through
environment variables, so a test can have an app with small limits, or one whose Temporal is a
closed port, without touching the shared stack.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from toolkit import rollout
from toolkit.parse import ParseClient
from toolkit.rollout import RolloutFlags
from toolkit.settings import Settings
from toolkit.stack._process import stop_pid
from toolkit.stack.temporal import TemporalServer
from toolkit.testing.ports import free_port

STARTUP_TIMEOUT_S = 60.0


@dataclass
class ApiServer:
    url: str
    settings: Settings  # the test's view: same values as the server's, api_url pointing at it
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _start(
    settings: Settings, environ: dict[str, str], tmp_dir: Path, overrides: dict[str, str]
) -> ApiServer:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_dir / f"api-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "toolkit", "api", "--host", "127.0.0.1", "--port", str(port)],
            env={**environ, **overrides},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"API exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            output = log.read_text(errors="replace")
            raise RuntimeError(f"API unhealthy after {STARTUP_TIMEOUT_S:g} s:\n{output}")
        time.sleep(0.1)
    view = dataclasses.replace(settings, toolkit_api_url=url)
    for key, value in overrides.items():
        name = key.lower()
        if name in {f.name for f in dataclasses.fields(Settings)} and name != "toolkit_api_url":
            field_type = type(getattr(settings, name))
            view = dataclasses.replace(view, **{name: field_type(value)})
    return ApiServer(url=url, settings=view, process=process, log=log)


def _stop(server: ApiServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def start_api(
    settings: Settings, stack_environ: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ApiServer]]:
    """Start an API process with environment ``overrides``; every one is stopped at the end of the session."""
    servers: list[ApiServer] = []
    tmp_dir = tmp_path_factory.mktemp("api")

    def start(**overrides: str) -> ApiServer:
        server = _start(settings, stack_environ, tmp_dir, overrides)
        servers.append(server)
        return server

    yield start
    for server in servers:
        _stop(server)


@pytest.fixture(scope="session")
def api(start_api: Callable[..., ApiServer]) -> ApiServer:
    """The API with the stack's settings."""
    return start_api()


@pytest.fixture(scope="session")
def small_api(start_api: Callable[..., ApiServer]) -> ApiServer:
    """An API with small limits (5 memories, 20,000 bytes of content per batch) and no private webhooks."""
    return start_api(MAX_BATCH_MEMORIES="5", MAX_BATCH_BYTES="20000", WEBHOOK_ALLOW_PRIVATE="0")


@pytest.fixture(scope="session")
def no_temporal_api(start_api: Callable[..., ApiServer]) -> ApiServer:
    """An API whose Temporal address is a closed port (the shared Temporal keeps running)."""
    return start_api(TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")


@pytest.fixture(scope="session")
def no_parse_api(start_api: Callable[..., ApiServer]) -> ApiServer:
    """An API whose Parse Server URL is a closed port."""
    return start_api(PARSE_SERVER_URL=f"http://127.0.0.1:{free_port()}/parse")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60.0) as client:
        yield client


class FlagSetter:
    """Sets the live rollout flags and waits out the API's flag cache so the next request sees them."""

    def __init__(self, parse: ParseClient, settings: Settings) -> None:
        self._parse = parse
        self._settings = settings

    async def __call__(self, *, enabled: bool, percent: int) -> RolloutFlags:
        flags = await rollout.write_flags(self._parse, self._settings, enabled=enabled, percent=percent)
        # API processes cache the flags for at most FLAGS_TTL_S: past that, every one has re-read them.
        await asyncio.sleep(rollout.FLAGS_TTL_S + 0.2)
        return flags


@pytest.fixture
async def set_flags(parse: ParseClient, settings: Settings) -> AsyncIterator[FlagSetter]:
    """Change the live flags during a test; the values from before the test are written back after it."""
    before = await rollout.read_flags(parse, settings)
    yield FlagSetter(parse, settings)
    await rollout.write_flags(
        parse, settings, enabled=before.use_parse_batch_storage, percent=before.canary_percent
    )


@pytest.fixture
def local_user_settings(tmp_path: Path, unique: str) -> Callable[[Settings], Settings]:
    """Settings whose stack dir is a temporary one, naming a fresh local user in local-user.json.

    The shared stack's ``toolkit-local`` keeps its password in the shared stack dir; tests use
    their own user so they never depend on (or disturb) that file.
    """

    def make(base: Settings) -> Settings:
        local = dataclasses.replace(base, stack_dir=tmp_path)
        (tmp_path / "local-user.json").write_text(json.dumps({"username": f"toolkit-local-{unique}"}))
        return local

    return make


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
