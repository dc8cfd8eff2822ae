"""``Idempotency-Key``: the same user and key return the same batch; nothing is created twice.

With a key, the batch id is derived from (user, key), so the workflow id ``batch-<batch_id>`` is too.
Two concurrent identical submits may both store a request, but Temporal starts only one workflow for
that id; the loser deletes its own request and answers with the winner's. Only a batch that was started
(its ``workflowRunId`` recorded, or its workflow known to Temporal) is replayed, whatever its status (a
``failed`` batch is replayed as-is): one still being started is a 409 "retry", and one whose API crashed
before starting it (older than :data:`ORPHAN_AFTER_S`) is discarded with its file, and the submission
starts afresh. Temporal never reuses a workflow id, so when the key's workflow id is taken by a
submission that was discarded, the key moves on to its next batch id (``generation``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from toolkit.api.auth import AuthenticatedUser
from toolkit.api.errors import WORKFLOWS_UNAVAILABLE, IdempotencyConflict, ServiceUnavailable
from toolkit.api.failures import start_failure, storage_failure
from toolkit.api.start_settling import DESCRIBE_SPAN, DESCRIBE_TIMEOUT_S, stored_for_s, workflow_exists
from toolkit.api.temporal_connection import TemporalConnection, TemporalUnavailable
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.errors import ParseError
from toolkit.parse.models import BatchMemoryRequest
from toolkit.settings import Settings
from toolkit.temporal.starter import workflow_id_for
from toolkit.timing import span

log = logging.getLogger(__name__)

# A start is one small RPC (the legacy one carries the batch): past API_START_TIMEOUT_S (default
# 15 s), Temporal is not answering.
START_TIMEOUT_S = 15.0
# An unstarted request older than this is an orphan (its API crashed): the start timeout, plus as
# long again for the store that precedes it, so a start still in flight is never taken for one.
ORPHAN_AFTER_S = 2 * START_TIMEOUT_S
# Orphans cleared per submission before giving up with 409 (each costs a delete).
MAX_ORPHANS_CLEARED = 3
STILL_STARTING = "a batch with this Idempotency-Key is still being started; retry"
# Batch ids one Idempotency-Key may move through (each needs a discarded earlier submission).
MAX_KEY_GENERATIONS = 5
KEY_EXHAUSTED = "this Idempotency-Key was used by submissions that could not be started; retry with a new key"


def idempotent_batch_id(user_id: str, key: str, generation: int = 0) -> str:
    """The batch id of (user, key): 32 hex digits, like a uuid4 hex, but the same on every retry.

    ``generation`` > 0 gives the key's next ids, used only when an earlier submission with the key
    was discarded after its workflow id was taken (Temporal never lets a workflow id be reused).
    """
    suffix = f":{generation}" if generation else ""
    return hashlib.sha256(f"idempotency:{user_id}:{key}{suffix}".encode()).hexdigest()[:32]


def candidate_batch_ids(user: AuthenticatedUser, key: str | None) -> list[str]:
    """The batch ids a submission may be stored under, in order: the key's ids, or one random id."""
    if key is None:
        return [uuid.uuid4().hex]
    return [idempotent_batch_id(user.user_id, key, generation) for generation in range(MAX_KEY_GENERATIONS)]


class IdempotencyKeys:
    """Looks up what an Idempotency-Key already did, and which batch id it may use next."""

    def __init__(
        self, settings: Settings, parse: ParseClient, temporal: TemporalConnection, *, orphan_after_s: float
    ) -> None:
        self._settings = settings
        self._parse = parse
        self._temporal = temporal
        self._orphan_after_s = orphan_after_s

    async def previous(self, user: AuthenticatedUser, key: str) -> BatchMemoryRequest | None:
        """The user's earliest request with this key, if any."""
        try:
            previous = await store.find_by_idempotency_key(self._parse, user.user_id, key)
        except ParseError as exc:
            raise storage_failure(exc) from exc
        # The lookup filters by user already; a batch is only ever answered to its owner.
        return previous if previous is not None and user.owns(previous) else None

    async def replayable(self, user: AuthenticatedUser, key: str) -> BatchMemoryRequest | None:
        """The earlier batch with this key if it was started (replay it), None if there is none.

        A request whose start is still in flight, or whose starter crashed, has no ``workflowRunId``;
        replaying it would promise a batch that may never run. Temporal has the last word (the start
        may have landed without being recorded). Otherwise: 409 while the start could still be in
        flight, and past :data:`ORPHAN_AFTER_S` the orphan is discarded and the caller starts afresh.
        """
        for _ in range(MAX_ORPHANS_CLEARED + 1):
            previous = await self.previous(user, key)
            # A run id (recorded once the workflow runs) or a status past pending proves the start;
            # workflowId alone does not: the reference path stores it before starting.
            if previous is None or previous.workflow_run_id or previous.status != "pending":
                return previous
            if await self._workflow_started(workflow_id_for(previous.batch_id)):
                return previous
            if stored_for_s(previous) <= self._orphan_after_s or previous.object_id is None:
                raise IdempotencyConflict(STILL_STARTING)
            log.warning(
                "discarding batch request %s (batch %s): never started, stored %.0f s ago",
                previous.object_id,
                previous.batch_id,
                stored_for_s(previous),
            )
            try:
                await store.delete_batch_request(self._parse, previous.object_id)
            except ParseError as exc:
                raise storage_failure(exc) from exc
        raise IdempotencyConflict(STILL_STARTING)

    async def free_batch_id(self, temporal: Client, user: AuthenticatedUser, key: str | None) -> str:
        """The batch id a chunked batch is stored under (its chunk files name it) before its start: the
        first of the key's ids whose workflow id was never used."""
        for batch_id in candidate_batch_ids(user, key):
            if key is None:
                return batch_id
            exists = await workflow_exists(temporal, workflow_id_for(batch_id))
            if exists is None:
                raise ServiceUnavailable(WORKFLOWS_UNAVAILABLE)
            if not exists:
                return batch_id
        raise IdempotencyConflict(KEY_EXHAUSTED)

    async def _workflow_started(self, workflow_id: str) -> bool:
        """Whether Temporal knows ``workflow_id``; 503 if it cannot say (a guess could duplicate a batch)."""
        try:
            temporal = await self._temporal.client()
        except TemporalUnavailable as exc:
            raise ServiceUnavailable(WORKFLOWS_UNAVAILABLE) from exc
        try:
            with span(DESCRIBE_SPAN):
                await asyncio.wait_for(
                    temporal.get_workflow_handle(workflow_id).describe(), DESCRIBE_TIMEOUT_S
                )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise start_failure(exc, self._settings) from exc
        except (RuntimeError, OSError, TimeoutError) as exc:
            raise start_failure(exc, self._settings) from exc
        return True
