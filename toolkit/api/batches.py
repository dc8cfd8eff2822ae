"""Accepting a batch and reporting on it: the logic behind the two batch routes.

Submission order: idempotent replay → rollout decision → (legacy: input size) → Temporal connected →
store in Parse → start the workflow. Everything that can refuse the batch (413, 422, 503) is checked
before anything is stored, so a refusal or an outage costs nothing.

Failure policy (design §4.3, "no orphan stays pending"): when the workflow cannot be started the
stored request is **deleted together with its file**, so a 503 means "nothing happened" and a retry
(with the same Idempotency-Key) starts clean. If the delete itself fails, the request is marked
``failed`` with the reason in ``errors`` and its idempotency key released instead.

Idempotency: with an ``Idempotency-Key`` the batch id is derived from (user, key), so the workflow
id ``batch-<batch_id>`` is too. Two concurrent identical submits may both store a request, but
Temporal starts only one workflow for that id; the loser deletes its own request and answers with
the winner's. Without a key the batch id is a random uuid4. Only a batch that was started (its
``workflowId`` recorded, or its workflow known to Temporal) is replayed: one still being started is
a 409 "retry", and one whose API crashed before starting it (older than :data:`ORPHAN_AFTER_S`) is
discarded with its file, and the submission starts afresh.

Ownership: a batch is answered to its owner only. Parse's ACL also lets ``role:org_<id>`` read it,
so the status lookup checks the owner explicitly (design §4.3: another user's batch is a 404).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from datetime import UTC, datetime

from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from toolkit.api.auth import AuthenticatedUser, InvalidSession
from toolkit.api.errors import (
    ApiError,
    BatchNotFound,
    IdempotencyConflict,
    PayloadTooLarge,
    RequestInvalid,
    ServiceUnavailable,
    UpstreamRefused,
)
from toolkit.api.legacy_limit import LegacyInputTooLarge, ensure_fits_legacy_input
from toolkit.api.progress import status_from_request, storage_of
from toolkit.api.schemas import BATCH_ID_PATTERN, BatchAccepted, BatchRequestIn, BatchStatusOut
from toolkit.api.temporal import TEMPORAL_CONNECT_ERRORS, TemporalConnection, TemporalUnavailable
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.codec import CodecError
from toolkit.parse.errors import ParseError, ParseUnavailable, PermissionDenied
from toolkit.parse.models import BatchError, BatchMemoryRequest
from toolkit.rollout import RolloutReader, Storage
from toolkit.settings import Settings
from toolkit.starter import start_batch_workflow_with_reference, start_legacy_batch_workflow, workflow_id_for

log = logging.getLogger(__name__)

# A start is one small RPC (the legacy one carries the batch): past this, Temporal is not answering.
START_TIMEOUT_S = 15.0
DESCRIBE_TIMEOUT_S = 3.0
# An unstarted request older than this is an orphan (its API crashed): the start timeout, plus as
# long again for the store that precedes it, so a start still in flight is never taken for one.
ORPHAN_AFTER_S = 2 * START_TIMEOUT_S
# Orphans cleared per submission before giving up with 409 (each costs a delete).
MAX_ORPHANS_CLEARED = 3
STILL_STARTING = "a batch with this Idempotency-Key is still being started; retry"
# Temporal answered these codes because it could not serve the call, not because the call was wrong.
_OUTAGE_CODES = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.UNKNOWN,
    RPCStatusCode.ABORTED,
}


def status_url(batch_id: str) -> str:
    # Relative: right behind any proxy, and identical when an idempotent answer is replayed.
    return f"/v1/batch/{batch_id}/status"


def idempotent_batch_id(user_id: str, key: str) -> str:
    """The batch id of (user, key): 32 hex digits, like a uuid4 hex, but the same on every retry."""
    return hashlib.sha256(f"idempotency:{user_id}:{key}".encode()).hexdigest()[:32]


def accepted_from_request(request: BatchMemoryRequest) -> BatchAccepted:
    """The first answer, rebuilt from what was stored (a replay answers exactly what the first call did)."""
    return BatchAccepted(
        batch_id=request.batch_id,
        workflow_id=request.workflow_id or workflow_id_for(request.batch_id),
        status="pending",
        storage=storage_of(request),
        total_memories=request.total_memories,
        status_url=status_url(request.batch_id),
    )


def _unavailable_parse(exc: ParseError) -> ApiError:
    if isinstance(exc, ParseUnavailable):
        return ServiceUnavailable(f"Parse Server is unreachable: {exc}")
    return UpstreamRefused(f"Parse Server refused the request: {exc}")


def _start_failure(exc: BaseException, settings: Settings) -> ApiError:
    if isinstance(exc, ParseError):
        return _unavailable_parse(exc)
    if isinstance(exc, RPCError) and exc.status not in _OUTAGE_CODES:
        return UpstreamRefused(f"Temporal refused to start the workflow ({exc.status.name}): {exc.message}")
    if isinstance(exc, TimeoutError):
        return ServiceUnavailable(
            f"Temporal at {settings.temporal_target} did not answer within {START_TIMEOUT_S:g} s"
        )
    return ServiceUnavailable(f"Temporal at {settings.temporal_target} is unreachable: {exc}")


def _unstorable(exc: Exception) -> RequestInvalid:
    # The message names the cause (a codec or pydantic error), never the content it failed on.
    error = {"type": "value_error", "loc": ["body", "memories"], "msg": f"the batch cannot be stored: {exc}"}
    return RequestInvalid([error])


def _owned_by(request: BatchMemoryRequest, user: AuthenticatedUser) -> bool:
    return request.user is not None and request.user.object_id == user.user_id


def _age_s(request: BatchMemoryRequest) -> float:
    """Seconds since the API stored ``request``: by its own clock (batchMetadata), else Parse's createdAt."""
    stored_at = request.batch_metadata.created_at if request.batch_metadata else request.created_at
    if stored_at is None:
        return float("inf")
    return (datetime.now(UTC) - stored_at).total_seconds()


class BatchService:
    def __init__(
        self, settings: Settings, parse: ParseClient, temporal: TemporalConnection, rollout: RolloutReader
    ) -> None:
        self._settings = settings
        self._parse = parse
        self._temporal = temporal
        self._rollout = rollout

    # -- POST /v1/memory/batch -------------------------------------------------------------------
    async def submit(
        self, user: AuthenticatedUser, batch: BatchRequestIn, idempotency_key: str | None
    ) -> tuple[BatchAccepted, bool]:
        """Store and start ``batch``; return the 202 answer and whether it is a replay."""
        if idempotency_key is not None:
            previous = await self._replayable(user, idempotency_key)
            if previous is not None:
                return accepted_from_request(previous), True
            batch_id = idempotent_batch_id(user.user_id, idempotency_key)
        else:
            batch_id = uuid.uuid4().hex
        try:
            storage = await self._rollout.storage_for(user.user_id)
        except ParseError as exc:
            raise _unavailable_parse(exc) from exc
        if storage == "legacy":
            # Before anything is stored: Temporal would refuse the input only after the store.
            try:
                await ensure_fits_legacy_input(batch.memories)
            except LegacyInputTooLarge as exc:
                raise PayloadTooLarge(str(exc)) from None
            except ValueError as exc:
                raise _unstorable(exc) from None
        temporal = await self._temporal_client()

        try:
            request_id = await store.create_batch_memory_request_in_parse(
                self._parse,
                self._settings,
                batch_id=batch_id,
                user_id=user.user_id,
                memories=batch.memories,
                storage=storage,
                organization_id=batch.organization_id,
                namespace_id=batch.namespace_id,
                workspace_id=batch.workspace_id,
                webhook_url=batch.webhook_url,
                webhook_secret=batch.webhook_secret,
                idempotency_key=idempotency_key,
            )
        except ParseError as exc:
            raise _unavailable_parse(exc) from exc
        except (CodecError, ValueError) as exc:
            # A safety net behind the body model: storage validates and encodes before it uploads
            # or creates anything, so a refusal here is the caller's bad input and nothing is stored.
            raise _unstorable(exc) from None

        try:
            workflow_id = await asyncio.wait_for(
                self._start(temporal, storage, request_id, batch_id, user, batch), START_TIMEOUT_S
            )
        except WorkflowAlreadyStartedError:
            return await self._lost_race(user, request_id, batch_id, idempotency_key), True
        except (*TEMPORAL_CONNECT_ERRORS, ParseError, TypeError, ValueError) as exc:
            workflow_id = workflow_id_for(batch_id)
            # An answer lost on the way back does not mean the start failed: ask before deleting.
            if not await self._workflow_exists(temporal, workflow_id):
                if isinstance(exc, TypeError | ValueError):
                    # The SDK could not serialize the (legacy) input: the caller's bad input.
                    await self._discard(request_id, f"workflow input not serializable: {type(exc).__name__}")
                    raise _unstorable(exc) from None
                await self._discard(request_id, f"workflow not started: {exc}")
                raise _start_failure(exc, self._settings) from exc
            log.warning(
                "start of %s raised %r but the workflow exists; accepting the batch", workflow_id, exc
            )
        return (
            BatchAccepted(
                batch_id=batch_id,
                workflow_id=workflow_id,
                storage=storage,
                total_memories=len(batch.memories),
                status_url=status_url(batch_id),
            ),
            False,
        )

    async def _temporal_client(self) -> Client:
        try:
            return await self._temporal.client()
        except TemporalUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from exc

    async def _previous(self, user: AuthenticatedUser, key: str) -> BatchMemoryRequest | None:
        try:
            previous = await store.find_by_idempotency_key(self._parse, user.user_id, key)
        except ParseError as exc:
            raise _unavailable_parse(exc) from exc
        # The lookup filters by user already; a batch is only ever answered to its owner.
        return previous if previous is not None and _owned_by(previous, user) else None

    async def _replayable(self, user: AuthenticatedUser, key: str) -> BatchMemoryRequest | None:
        """The earlier batch with this key if it was started (replay it), None if there is none.

        A request whose start is still in flight, or whose starter crashed, has no ``workflowId``;
        replaying it would promise a batch that may never run. Temporal has the last word (the start
        may have landed without being recorded). Otherwise: 409 while the start could still be in
        flight, and past :data:`ORPHAN_AFTER_S` the orphan is discarded and the caller starts afresh.
        """
        for _ in range(MAX_ORPHANS_CLEARED + 1):
            previous = await self._previous(user, key)
            if previous is None or previous.workflow_id:
                return previous
            if await self._workflow_started(workflow_id_for(previous.batch_id)):
                return previous
            if _age_s(previous) <= ORPHAN_AFTER_S or previous.object_id is None:
                raise IdempotencyConflict(STILL_STARTING)
            log.warning(
                "discarding batch request %s (batch %s): never started, stored %.0f s ago",
                previous.object_id,
                previous.batch_id,
                _age_s(previous),
            )
            try:
                await store.delete_batch_request(self._parse, previous.object_id)
            except ParseError as exc:
                raise _unavailable_parse(exc) from exc
        raise IdempotencyConflict(STILL_STARTING)

    async def _workflow_started(self, workflow_id: str) -> bool:
        """Whether Temporal knows ``workflow_id``; 503 if it cannot say (a guess could duplicate a batch)."""
        temporal = await self._temporal_client()
        try:
            await asyncio.wait_for(temporal.get_workflow_handle(workflow_id).describe(), DESCRIBE_TIMEOUT_S)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise _start_failure(exc, self._settings) from exc
        except (RuntimeError, OSError, TimeoutError) as exc:
            raise _start_failure(exc, self._settings) from exc
        return True

    async def _start(
        self,
        temporal: Client,
        storage: Storage,
        request_id: str,
        batch_id: str,
        user: AuthenticatedUser,
        batch: BatchRequestIn,
    ) -> str:
        if storage == "reference":
            return await start_batch_workflow_with_reference(
                temporal, self._parse, self._settings, request_id=request_id, batch_id=batch_id
            )
        return await start_legacy_batch_workflow(
            temporal,
            self._parse,
            self._settings,
            request_id=request_id,
            batch_id=batch_id,
            user_id=user.user_id,
            memories=batch.memories,
            organization_id=batch.organization_id,
            namespace_id=batch.namespace_id,
            workspace_id=batch.workspace_id,
        )

    async def _lost_race(
        self, user: AuthenticatedUser, request_id: str, batch_id: str, key: str | None
    ) -> BatchAccepted:
        """Another submit with this key started ``batch-<batch_id>`` first: drop ours, answer with theirs."""
        await self._discard(request_id, "duplicate submission: another request with this idempotency key won")
        winner = await self._previous(user, key) if key is not None else None
        if winner is None or winner.batch_id != batch_id:
            raise IdempotencyConflict(
                "this Idempotency-Key belongs to an earlier submission that could not be started; "
                "retry with a new key"
            )
        return accepted_from_request(winner)

    async def _workflow_exists(self, temporal: Client, workflow_id: str) -> bool:
        try:
            await asyncio.wait_for(temporal.get_workflow_handle(workflow_id).describe(), DESCRIBE_TIMEOUT_S)
        except TEMPORAL_CONNECT_ERRORS:
            return False
        return True

    async def _discard(self, request_id: str, reason: str) -> None:
        """Delete a request that will never run (object and file); failing that, mark it failed."""
        try:
            await store.delete_batch_request(self._parse, request_id)
            return
        except ParseError as exc:
            log.warning(
                "could not delete unstarted batch request %s (%s); marking it failed", request_id, exc
            )
        error = BatchError(index=-1, error=reason, timestamp=datetime.now(UTC))
        try:
            await store.update_batch_request_status(
                self._parse,
                request_id,
                "failed",
                # The key is released so a retry with it can start a new batch.
                extra={"errors": [error.to_parse()], "idempotencyKey": {"__op": "Delete"}},
            )
        except ParseError as exc:
            log.error(
                "batch request %s left pending: neither deleted nor marked failed (%s)", request_id, exc
            )

    # -- GET /v1/batch/{batch_id}/status ---------------------------------------------------------
    async def status(self, user: AuthenticatedUser, batch_id: str) -> BatchStatusOut:
        if re.fullmatch(BATCH_ID_PATTERN, batch_id) is None:
            raise BatchNotFound()
        try:
            # The caller's session: Parse's ACL hides other users' batches (None, exactly like unknown ones).
            request = await store.find_batch_request(self._parse, batch_id, session_token=user.session_token)
        except PermissionDenied as exc:
            raise InvalidSession("invalid or expired session token") from exc
        except ParseError as exc:
            raise _unavailable_parse(exc) from exc
        # Parse's ACL also lets the organization's role read the batch; the API answers its owner only.
        if request is None or not _owned_by(request, user):
            raise BatchNotFound()
        return status_from_request(request, datetime.now(UTC))
