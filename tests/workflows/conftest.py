"""Fixtures for workflow tests: the real Temporal dev server, an in-process worker on a random task queue."""

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
    """Settings of the in-process worker: its own task queue, quick webhook retries."""
    return dataclasses.replace(
        settings,
        temporal_task_queue=f"test-{uuid.uuid4().hex[:10]}",
        webhook_max_attempts=3,
        webhook_backoff_s=0.1,
        webhook_timeout_s=1.0,
    )


@pytest.fixture
async def worker(temporal: Client, worker_settings: Settings, parse: ParseClient) -> AsyncIterator[None]:
    async with build_worker(temporal, worker_settings, parse):
        yield
