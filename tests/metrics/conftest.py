"""Fixtures for the metrics tests: the real Temporal dev server and an in-process worker on its own queue."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client

from toolkit.parse import ParseClient
from toolkit.settings import Settings
from toolkit.temporal_client import connect
from toolkit.worker import build_worker


@pytest.fixture(scope="session")
async def temporal(settings: Settings) -> Client:
    return await connect(settings)


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, temporal_task_queue=f"metrics-{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def worker(temporal: Client, worker_settings: Settings, parse: ParseClient) -> AsyncIterator[None]:
    async with build_worker(temporal, worker_settings, parse):
        yield
