"""Shared fixtures. The suite runs against the real local stack; if it is not up, the session starts it."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from toolkit import stack
from toolkit.parse import ParseClient
from toolkit.settings import Settings, load_settings
from toolkit.users import ParseUser, sign_up


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
