"""Shared fixtures. The suite runs against the real local stack; if it is not up, the session starts it.

The API servers (``tests/fixtures/api_server.py``) and the in-process worker
(``tests/fixtures/temporal_worker.py``) are fixtures of every part of the suite: tests of the validation
layer drive the API and run workflows as much as the service's own tests do.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.fixtures.api_server import (  # noqa: F401 (fixtures)
    api,
    http,
    local_user_settings,
    no_parse_api,
    no_temporal_api,
    own_temporal,
    set_flags,
    small_api,
    start_api,
    unpolled_api,
)
from tests.fixtures.parse_proxy import parse_proxy  # noqa: F401 (fixture)
from tests.fixtures.temporal_worker import temporal, worker, worker_settings  # noqa: F401 (fixtures)
from toolkit import stack
from toolkit.parse import ParseClient
from toolkit.parse.users import ParseUser, sign_up
from toolkit.settings import Settings, load_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    current = load_settings()
    if not all(part.healthy for part in stack.status(current)):
        stack.up(current)
        current = load_settings()
    return current


@pytest.fixture(scope="session")
def stack_environ(settings: Settings) -> dict[str, str]:
    """The environment a subprocess needs to talk to the same stack."""
    return {**os.environ, "TOOLKIT_STACK_DIR": str(settings.stack_dir)}


@pytest.fixture(scope="session")
async def parse(settings: Settings) -> AsyncIterator[ParseClient]:
    async with ParseClient(settings) as client:
        yield client


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
async def user(parse: ParseClient) -> ParseUser:
    """A fresh, real Parse user with a session."""
    return await sign_up(parse)


@pytest.fixture
async def other_user(parse: ParseClient) -> ParseUser:
    return await sign_up(parse)
