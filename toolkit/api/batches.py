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
``workflowRunId`` recorded, or its workflow known to Temporal) is replayed: one still being started is
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
import time
import uuid
from datetime import UTC, datetime

from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from toolkit.api.auth import AuthenticatedUser, InvalidSession
from toolkit.api.errors import (
    START_UNCONFIRMED,
    STORAGE_REFUSED,
    STORAGE_UNAVAILABLE,
    WORKFLOWS_REFUSED,
    WORKFLOWS_UNAVAILABLE,
    ApiError,
    BatchNotFound,
    IdempotencyConflict,
    PayloadTooLarge,
    RequestInvalid,
    ServiceUnavailable,
    TooManyRequests,
    UpstreamRefused,
)
from toolkit.api.legacy_limit import LegacyInputTooLarge, ensure_fits_legacy_input
from toolkit.api.progress import status_from_request, storage_of
from toolkit.api.schemas import (
    BATCH_ID_PATTERN,
    BatchAccepted,
    BatchErrorDetailOut,
    BatchErrorsPage,
    BatchRequestIn,
    BatchStatusOut,
)
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

# A start is one small RPC (the legacy one carries the batch): past API_START_TIMEOUT_S (default
# 15 s), Temporal is not answering.
START_TIMEOUT_S = 15.0
DESCRIBE_TIMEOUT_S = 3.0
# An unstarted request older than this is an orphan (its API crashed): the start timeout, plus as
# long again for the store that precedes it, so a start still in flight is never taken for one.
ORPHAN_AFTER_S = 2 * START_TIMEOUT_S
# After a start Temporal could not confirm: how often, and how long, the API asks again.
SETTLE_EVERY_S = 1.0
SETTLE_FOR_S = 600.0
# _describe_run_id's answer when Temporal cannot be asked (distinct from None, "no such workflow").
_UNKNOWN = object()
# Orphans cleared per submission before giving up with 409 (each costs a delete).
MAX_ORPHANS_CLEARED = 3
STILL_STARTING = "a batch with this Idempotency-Key is still being started; retry"
# Retry-After of a 429 for too many batches in flight: a small batch finishes in seconds.
IN_FLIGHT_RETRY_AFTER_S = 10
# Batch ids one Idempotency-Key may move through (each needs a discarded earlier submission).
MAX_KEY_GENERATIONS = 5
KEY_EXHAUSTED = "this Idempotency-Key was used by submissions that could not be started; retry with a new key"
# Temporal answered these codes because it could not serve the call, not because the call was wrong.
_OUTAGE_CODES = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.UNKNOWN,
    RPCStatusCode.ABORTED,
}


async def _describe_run_id(temporal: Client, workflow_id: str) -> str | None | object:
    """The run id of ``workflow_id``; None if Temporal does not know it; :data:`_UNKNOWN` if it cannot say."""
    try:
        description = await asyncio.wait_for(
            temporal.get_workflow_handle(workflow_id).describe(), DESCRIBE_TIMEOUT_S
        )
    except RPCError as exc:
        return None if exc.status == RPCStatusCode.NOT_FOUND else _UNKNOWN
    except (RuntimeError, OSError, TimeoutError):
        return _UNKNOWN
    return description.run_id


def status_url(batch_id: str) -> str:
    # Relative: right behind any proxy, and identical when an idempotent answer is replayed.
    return f"/v1/batch/{batch_id}/status"


def idempotent_batch_id(user_id: str, key: str, generation: int = 0) -> str:
    """The batch id of (user, key): 32 hex digits, like a uuid4 hex, but the same on every retry.

    ``generation`` > 0 gives the key's next ids, used only when an earlier submission with the key
    was discarded after its workflow id was taken (Temporal never lets a workflow id be reused).
    """
    suffix = f":{generation}" if generation else ""
    return hashlib.sha256(f"idempotency:{user_id}:{key}{suffix}".encode()).hexdigest()[:32]


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
    # The detail (Parse's URL, its error text) is for the operator's log, never for the client.
    if isinstance(exc, ParseUnavailable):
        log.warning("Parse Server unavailable: %s", exc)
        return ServiceUnavailable(STORAGE_UNAVAILABLE)
    log.warning("Parse Server refused a request: %s", exc)
    return UpstreamRefused(STORAGE_REFUSED)


def _start_failure(exc: BaseException, settings: Settings) -> ApiError:
    if isinstance(exc, ParseError):
        return _unavailable_parse(exc)
    if isinstance(exc, RPCError) and exc.status not in _OUTAGE_CODES:
        log.warning("Temporal at %s refused a call (%s): %s", settings.temporal_target, exc.status.name, exc)
        return UpstreamRefused(WORKFLOWS_REFUSED)
    log.warning("Temporal at %s unavailable: %s", settings.temporal_target, type(exc).__name__ + f": {exc}")
    return ServiceUnavailable(WORKFLOWS_UNAVAILABLE)


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
        self._start_timeout_s = settings.api_start_timeout_s
        # An unstarted request older than this is an orphan (see ORPHAN_AFTER_S).
        self._orphan_after_s = 2 * settings.api_start_timeout_s
        self._background: set[asyncio.Task[None]] = set()

    # -- POST /v1/memory/batch -------------------------------------------------------------------
    async def submit(
        self, user: AuthenticatedUser, batch: BatchRequestIn, idempotency_key: str | None
    ) -> tuple[BatchAccepted, bool]:
        """Store and start ``batch``; return the 202 answer and whether it is a replay."""
        if idempotency_key is not None:
            previous = await self._replayable(user, idempotency_key)
            if previous is not None:
                return accepted_from_request(previous), True
            candidates = [
                idempotent_batch_id(user.user_id, idempotency_key, generation)
                for generation in range(MAX_KEY_GENERATIONS)
            ]
        else:
            candidates = [uuid.uuid4().hex]
        await self._check_in_flight(user)
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
        for batch_id in candidates:
            answer = await self._store_and_start(temporal, user, batch, idempotency_key, storage, batch_id)
            if answer is not None:
                return answer
            # The workflow id of this batch id belongs to an earlier submission with this key that is
            # gone (discarded before its start was known). Temporal never reuses a workflow id, so the
            # key moves on to its next batch id instead of answering 409 forever.
            log.warning("batch id %s of an Idempotency-Key is taken by a discarded submission", batch_id)
        raise IdempotencyConflict(KEY_EXHAUSTED)

    async def _check_in_flight(self, user: AuthenticatedUser) -> None:
        """429 once the user has MAX_BATCHES_IN_FLIGHT batches pending or processing.

        Counted from Parse, so every API process enforces the same cap. Checked before anything is
        stored; two submits racing past it can exceed it by one each (a soft cap, not a lock). A replay
        is answered before this check: asking again for a batch already in flight is never refused.
        """
        cap = self._settings.max_batches_in_flight
        if cap <= 0:
            return
        try:
            in_flight = await store.count_in_flight(self._parse, user.user_id)
        except ParseError as exc:
            raise _unavailable_parse(exc) from exc
        if in_flight >= cap:
            log.info("user %s refused: %d batches in flight (limit %d)", user.user_id, in_flight, cap)
            raise TooManyRequests(
                f"too many batches in flight: {in_flight}; the limit is {cap} per user. "
                "Retry once one of them has finished.",
                retry_after_s=IN_FLIGHT_RETRY_AFTER_S,
            )

    async def _store_and_start(
        self,
        temporal: Client,
        user: AuthenticatedUser,
        batch: BatchRequestIn,
        idempotency_key: str | None,
        storage: Storage,
        batch_id: str,
    ) -> tuple[BatchAccepted, bool] | None:
        """Store the batch as ``batch_id`` and start it; None if that workflow id is taken by a dead batch."""
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
                workflow_id=workflow_id_for(batch_id) if storage == "reference" else None,
            )
        except ParseError as exc:
            raise _unavailable_parse(exc) from exc
        except (CodecError, ValueError) as exc:
            # A safety net behind the body model: storage validates and encodes before it uploads
            # or creates anything, so a refusal here is the caller's bad input and nothing is stored.
            raise _unstorable(exc) from None
        try:
            workflow_id = await asyncio.wait_for(
                self._start(temporal, storage, request_id, batch_id, user, batch), self._start_timeout_s
            )
        except WorkflowAlreadyStartedError:
            winner = await self._lost_race(user, request_id, batch_id, idempotency_key)
            return None if winner is None else (winner, True)
        except (TypeError, ValueError) as exc:
            # The SDK could not serialize the (legacy) input before sending anything: the caller's
            # bad input, and the start certainly did not land.
            await self._discard(request_id, f"workflow input not serializable: {type(exc).__name__}")
            raise _unstorable(exc) from None
        except (*TEMPORAL_CONNECT_ERRORS, ParseError) as exc:
            workflow_id = workflow_id_for(batch_id)
            # An answer lost on the way back does not mean the start failed: ask before deleting.
            exists = await self._workflow_exists(temporal, workflow_id)
            if exists is None:
                # Temporal cannot say. The start may have landed, and a workflow whose request was
                # deleted fails for good: keep the request, answer 503, and settle it once Temporal
                # answers again (record the workflow, or discard the request if it never started).
                log.warning(
                    "start of %s raised %s and Temporal cannot confirm it; request %s kept",
                    workflow_id,
                    type(exc).__name__,
                    request_id,
                )
                self._settle_later(request_id, workflow_id)
                raise ServiceUnavailable(START_UNCONFIRMED) from exc
            if not exists:
                await self._discard(request_id, f"workflow not started: {type(exc).__name__}")
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
            # TemporalConnection logged the cause (with the address) when the connect failed.
            raise ServiceUnavailable(WORKFLOWS_UNAVAILABLE) from exc

    async def _previous(self, user: AuthenticatedUser, key: str) -> BatchMemoryRequest | None:
        try:
            previous = await store.find_by_idempotency_key(self._parse, user.user_id, key)
        except ParseError as exc:
            raise _unavailable_parse(exc) from exc
        # The lookup filters by user already; a batch is only ever answered to its owner.
        return previous if previous is not None and _owned_by(previous, user) else None

    async def _replayable(self, user: AuthenticatedUser, key: str) -> BatchMemoryRequest | None:
        """The earlier batch with this key if it was started (replay it), None if there is none.

        A request whose start is still in flight, or whose starter crashed, has no ``workflowRunId``;
        replaying it would promise a batch that may never run. Temporal has the last word (the start
        may have landed without being recorded). Otherwise: 409 while the start could still be in
        flight, and past :data:`ORPHAN_AFTER_S` the orphan is discarded and the caller starts afresh.
        """
        for _ in range(MAX_ORPHANS_CLEARED + 1):
            previous = await self._previous(user, key)
            # A run id (recorded once the workflow runs) or a status past pending proves the start;
            # workflowId alone does not: the reference path stores it before starting.
            if previous is None or previous.workflow_run_id or previous.status != "pending":
                return previous
            if await self._workflow_started(workflow_id_for(previous.batch_id)):
                return previous
            if _age_s(previous) <= self._orphan_after_s or previous.object_id is None:
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
            # workflowId was stored at create; the worker records the run id (one write less here).
            return await start_batch_workflow_with_reference(
                temporal, self._parse, self._settings, request_id=request_id, batch_id=batch_id, record=False
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
    ) -> BatchAccepted | None:
        """``batch-<batch_id>`` exists already: drop ours, and answer with the batch that owns it.

        Either another submit with this key started it first (answer with that one), or it belongs
        to an earlier submission that is gone (None: the caller moves on to the key's next batch id).
        """
        await self._discard(request_id, "duplicate submission: another request with this idempotency key won")
        winner = await self._previous(user, key) if key is not None else None
        if winner is None or winner.batch_id != batch_id:
            if key is None:
                # A random uuid4 collided: practically impossible, and nothing to replay.
                raise IdempotencyConflict(STILL_STARTING)
            return None
        return accepted_from_request(winner)

    async def _workflow_exists(self, temporal: Client, workflow_id: str) -> bool | None:
        """True or False when Temporal says so; None when it cannot be asked (an outage, a timeout)."""
        run_id = await _describe_run_id(temporal, workflow_id)
        return None if run_id is _UNKNOWN else run_id is not None

    def _settle_later(self, request_id: str, workflow_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(request_id, workflow_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _settle(self, request_id: str, workflow_id: str) -> None:
        """Ask Temporal until it answers whether ``workflow_id`` started; record it, or discard the request.

        "Not found" counts only once no start can still be in flight (:attr:`_orphan_after_s` after
        the start was sent). If this process ends first, the request stays ``pending`` without a
        ``workflowId``: a retry with its Idempotency-Key settles it the same way.
        """
        sent_at = time.monotonic()
        while time.monotonic() - sent_at < SETTLE_FOR_S:
            await asyncio.sleep(SETTLE_EVERY_S)
            try:
                temporal = await self._temporal.client()
            except TemporalUnavailable:
                continue
            run_id = await _describe_run_id(temporal, workflow_id)
            try:
                if isinstance(run_id, str):
                    await store.record_workflow(self._parse, request_id, workflow_id, run_id)
                    log.info(
                        "start of %s confirmed after an outage; request %s kept", workflow_id, request_id
                    )
                    return
                if run_id is None and time.monotonic() - sent_at > self._orphan_after_s:
                    await self._discard(request_id, "workflow not started (confirmed after an outage)")
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
            await store.append_batch_request_errors(self._parse, request_id, [error])
            await store.update_batch_request_status(
                self._parse,
                request_id,
                "failed",
                # The key is released so a retry with it can start a new batch.
                extra={"idempotencyKey": {"__op": "Delete"}},
            )
        except ParseError as exc:
            log.error(
                "batch request %s left pending: neither deleted nor marked failed (%s)", request_id, exc
            )

    # -- GET /v1/batch/{batch_id}/status ---------------------------------------------------------
    async def status(self, user: AuthenticatedUser, batch_id: str) -> BatchStatusOut:
        request = await self._owned_request(user, batch_id)
        return status_from_request(request, datetime.now(UTC))

    # -- GET /v1/batch/{batch_id}/errors ---------------------------------------------------------
    async def errors(
        self, user: AuthenticatedUser, batch_id: str, offset: int, limit: int
    ) -> BatchErrorsPage:
        request = await self._owned_request(user, batch_id)
        if request.error_count is None:
            # Stored before per-memory error objects existed: its ``errors`` array is complete.
            distinct = sorted(request.distinct_errors(), key=lambda e: (e.index, e.timestamp))
            page, total = distinct[offset : offset + limit], len(distinct)
        else:
            try:
                page = await store.find_batch_errors(
                    self._parse, batch_id, offset=offset, limit=limit, session_token=user.session_token
                )
            except PermissionDenied as exc:
                raise InvalidSession("invalid or expired session token") from exc
            except ParseError as exc:
                raise _unavailable_parse(exc) from exc
            total = request.error_count
        return BatchErrorsPage(
            batch_id=batch_id,
            error_count=total,
            offset=offset,
            limit=limit,
            errors=[BatchErrorDetailOut(index=e.index, error=e.error, timestamp=e.timestamp) for e in page],
        )

    async def _owned_request(self, user: AuthenticatedUser, batch_id: str) -> BatchMemoryRequest:
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
        return request
