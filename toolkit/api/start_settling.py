"""Starts Temporal could not confirm, and requests that will never run.

When a start raised and Temporal cannot say whether it landed (the start and the describe after it both
failed), deleting the request could pull it from under a running workflow. :class:`StartSettler` keeps
the request and asks Temporal again in the background until it answers: it records the workflow on the
request if the start landed, and discards the request if it never did (:func:`discard_unstarted`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Final

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from toolkit.api.temporal_connection import TemporalConnection, TemporalUnavailable
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.errors import ParseError
from toolkit.parse.models import BatchMemoryRequest
from toolkit.timing import span

log = logging.getLogger(__name__)

DESCRIBE_TIMEOUT_S = 3.0
# Server-Timing name of a describe, so a measurement can tell the API's Temporal calls (toolkit saturation).
DESCRIBE_SPAN = "temporal.describe"
# After a start Temporal could not confirm: how often, and how long, the API asks again.
SETTLE_EVERY_S = 1.0
SETTLE_FOR_S = 600.0


class _Unknown:
    """Temporal could not be asked (distinct from None, "no such workflow")."""


UNKNOWN: Final = _Unknown()


async def describe_run_id(temporal: Client, workflow_id: str) -> str | None | _Unknown:
    """The run id of ``workflow_id``; None if Temporal does not know it; :data:`UNKNOWN` if it cannot say."""
    try:
        with span(DESCRIBE_SPAN):
            description = await asyncio.wait_for(
                temporal.get_workflow_handle(workflow_id).describe(), DESCRIBE_TIMEOUT_S
            )
    except RPCError as exc:
        return None if exc.status == RPCStatusCode.NOT_FOUND else UNKNOWN
    except (RuntimeError, OSError, TimeoutError):
        return UNKNOWN
    return description.run_id


async def workflow_exists(temporal: Client, workflow_id: str) -> bool | None:
    """True or False when Temporal says so; None when it cannot be asked (an outage, a timeout)."""
    run_id = await describe_run_id(temporal, workflow_id)
    return None if isinstance(run_id, _Unknown) else run_id is not None


def stored_for_s(request: BatchMemoryRequest) -> float:
    """Seconds since the API stored ``request``: by its own clock (batchMetadata), else Parse's createdAt."""
    stored_at = request.batch_metadata.created_at if request.batch_metadata else request.created_at
    if stored_at is None:
        return float("inf")
    return (datetime.now(UTC) - stored_at).total_seconds()


async def discard_unstarted(
    parse: ParseClient, request_id: str, reason: str, *, release: bool = True
) -> None:
    """Delete a request that will never run (object and files); failing that, retire it (marked failed).

    Either way its in-flight slot is given back, unless ``release=False`` (the caller stores the batch
    again under the same slot). Retired, it frees its Idempotency-Key and its batch id, so a retry with
    the key starts a new batch that nothing old shadows.
    """
    try:
        await store.delete_batch_request(parse, request_id, release=release)
        return
    except ParseError as exc:
        log.warning("could not delete unstarted batch request %s (%s); retiring it", request_id, exc)
    try:
        await store.retire_unstarted_request(parse, request_id, reason, release=release)
    except ParseError as exc:
        log.error("batch request %s left pending: neither deleted nor retired (%s)", request_id, exc)


class StartSettler:
    """Settles unconfirmed starts in background tasks owned by the API process."""

    def __init__(self, parse: ParseClient, temporal: TemporalConnection, *, orphan_after_s: float) -> None:
        self._parse = parse
        self._temporal = temporal
        # "Not found" counts only once no start can still be in flight.
        self._orphan_after_s = orphan_after_s
        self._background: set[asyncio.Task[None]] = set()

    def settle_later(self, request_id: str, workflow_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(request_id, workflow_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _settle(self, request_id: str, workflow_id: str) -> None:
        """Ask Temporal until it answers whether ``workflow_id`` started; record it, or discard the request.

        If this process ends first, the request stays ``pending`` without a ``workflowRunId``: a retry
        with its Idempotency-Key settles it the same way.
        """
        sent_at = time.monotonic()
        while time.monotonic() - sent_at < SETTLE_FOR_S:
            await asyncio.sleep(SETTLE_EVERY_S)
            try:
                temporal = await self._temporal.client()
            except TemporalUnavailable:
                continue
            run_id = await describe_run_id(temporal, workflow_id)
            try:
                if isinstance(run_id, str):
                    await store.record_workflow(self._parse, request_id, workflow_id, run_id)
                    log.info(
                        "start of %s confirmed after an outage; request %s kept", workflow_id, request_id
                    )
                    return
                if run_id is None and time.monotonic() - sent_at > self._orphan_after_s:
                    await discard_unstarted(
                        self._parse, request_id, "workflow not started (confirmed after an outage)"
                    )
                    log.info("start of %s never landed; request %s discarded", workflow_id, request_id)
                    return
            except ParseError as exc:
                log.warning("settling request %s: Parse unavailable (%s); will retry", request_id, exc)
        log.error(
            "request %s: start of %s still unconfirmed after %.0f s; left pending (a retry with its "
            "Idempotency-Key settles it)",
            request_id,
            workflow_id,
            SETTLE_FOR_S,
        )

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
