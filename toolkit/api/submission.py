"""Accepting a batch: checks, then store in Parse, then start its workflow.

Order: idempotent replay → in-flight slot taken (429) → rollout decision → (legacy: input size) →
Temporal connected → store in Parse → start the workflow. Everything that can refuse the batch (413,
422, 429, 503) is checked before anything is stored, so a refusal or an outage costs nothing; the slot
is given back on every refusal (:class:`~toolkit.api.in_flight.InFlightCap`).

Failure policy (design §4.3, "no orphan stays pending"): when the workflow certainly did not start
(Temporal refused it, or says it does not exist) the stored request is **deleted together with its
file**, so a 503 means "nothing happened" and a retry (with the same Idempotency-Key) starts clean.
When Temporal cannot say whether the start landed, the request is kept, the answer is a 503 saying the
start is unconfirmed, and :class:`~toolkit.api.start_settling.StartSettler` settles it later.
"""

from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError

from toolkit.api.answers import accepted_from_request, status_url
from toolkit.api.auth import AuthenticatedUser
from toolkit.api.errors import (
    WORKFLOWS_UNAVAILABLE,
    IdempotencyConflict,
    PayloadTooLarge,
    ServiceUnavailable,
    StartUnconfirmed,
)
from toolkit.api.failures import start_failure, storage_failure, unstorable
from toolkit.api.idempotency import KEY_EXHAUSTED, STILL_STARTING, IdempotencyKeys, candidate_batch_ids
from toolkit.api.in_flight import InFlightCap
from toolkit.api.legacy_limit import LegacyInputTooLarge, ensure_fits_legacy_input
from toolkit.api.schemas import BatchAccepted, BatchRequestIn
from toolkit.api.start_settling import StartSettler, discard_unstarted, workflow_exists
from toolkit.api.temporal_connection import TEMPORAL_CONNECT_ERRORS, TemporalConnection, TemporalUnavailable
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.codec import CodecError
from toolkit.parse.errors import ParseError
from toolkit.parse.in_flight import SlotHold
from toolkit.rollout import RolloutReader, Storage
from toolkit.settings import Settings
from toolkit.temporal.starter import (
    start_batch_workflow_with_reference,
    start_legacy_batch_workflow,
    workflow_id_for,
)

log = logging.getLogger(__name__)


def submission_of(
    user: AuthenticatedUser, batch: BatchRequestIn, key: str | None, slot_hold: str | None = None
) -> store.Submission:
    """Who submitted ``batch`` and how to answer them, as the new request stores it."""
    return store.Submission(
        user_id=user.user_id,
        organization_id=batch.organization_id,
        namespace_id=batch.namespace_id,
        workspace_id=batch.workspace_id,
        webhook_url=batch.webhook_url,
        webhook_secret=batch.webhook_secret,
        idempotency_key=key,
        slot_hold=slot_hold,
    )


class BatchSubmitter:
    """Stores and starts batches; see the module docstring for the order of checks and the failure policy."""

    def __init__(
        self,
        settings: Settings,
        parse: ParseClient,
        temporal: TemporalConnection,
        rollout: RolloutReader,
        keys: IdempotencyKeys,
        settler: StartSettler,
        cap: InFlightCap,
    ) -> None:
        self.settings = settings
        self.parse = parse
        self.rollout = rollout
        self.keys = keys
        self.cap = cap
        self._temporal = temporal
        self._settler = settler
        self._start_timeout_s = settings.api_start_timeout_s

    async def submit(
        self, user: AuthenticatedUser, batch: BatchRequestIn, idempotency_key: str | None
    ) -> tuple[BatchAccepted, bool]:
        """Store and start ``batch``; return the 202 answer and whether it is a replay."""
        if idempotency_key is not None:
            previous = await self.keys.replayable(user, idempotency_key)
            if previous is not None:
                return accepted_from_request(previous), True
        hold = await self.cap.take(user)
        return await self.cap.holding(hold, self._store_and_start_holding(user, batch, idempotency_key, hold))

    async def _store_and_start_holding(
        self, user: AuthenticatedUser, batch: BatchRequestIn, idempotency_key: str | None, hold: SlotHold
    ) -> tuple[BatchAccepted, bool]:
        """Everything after the slot is taken: the rollout path, the checks left, the store and the start."""
        storage = await self.storage_for(user)
        if storage == "legacy":
            # Before anything is stored: Temporal would refuse the input only after the store.
            try:
                await ensure_fits_legacy_input(batch.memories)
            except LegacyInputTooLarge as exc:
                raise PayloadTooLarge(str(exc)) from None
            except ValueError as exc:
                raise unstorable(exc) from None
        temporal = await self.temporal_client()
        for batch_id in candidate_batch_ids(user, idempotency_key):
            answer = await self._store_and_start(
                temporal, user, batch, idempotency_key, storage, batch_id, hold
            )
            if answer is not None:
                return answer
            # The workflow id of this batch id belongs to an earlier submission with this key that is
            # gone (discarded before its start was known). Temporal never reuses a workflow id, so the
            # key moves on to its next batch id instead of answering 409 forever.
            log.warning("batch id %s of an Idempotency-Key is taken by a discarded submission", batch_id)
        raise IdempotencyConflict(KEY_EXHAUSTED)

    async def storage_for(self, user: AuthenticatedUser) -> Storage:
        """The path the rollout flags choose for this user."""
        try:
            return await self.rollout.storage_for(user.user_id)
        except ParseError as exc:
            raise storage_failure(exc) from exc

    async def temporal_client(self) -> Client:
        try:
            return await self._temporal.client()
        except TemporalUnavailable as exc:
            # TemporalConnection logged the cause (with the address) when the connect failed.
            raise ServiceUnavailable(WORKFLOWS_UNAVAILABLE) from exc

    async def _store_and_start(
        self,
        temporal: Client,
        user: AuthenticatedUser,
        batch: BatchRequestIn,
        idempotency_key: str | None,
        storage: Storage,
        batch_id: str,
        hold: SlotHold,
    ) -> tuple[BatchAccepted, bool] | None:
        """Store the batch as ``batch_id`` and start it; None if that workflow id is taken by a dead batch."""
        try:
            request_id = await store.create_batch_memory_request_in_parse(
                self.parse,
                self.settings,
                batch_id=batch_id,
                submission=submission_of(user, batch, idempotency_key, hold.token),
                memories=batch.memories,
                storage=storage,
                workflow_id=workflow_id_for(batch_id) if storage == "reference" else None,
            )
        except ParseError as exc:
            raise storage_failure(exc) from exc
        except (CodecError, ValueError) as exc:
            # A safety net behind the body model: storage validates and encodes before it uploads
            # or creates anything, so a refusal here is the caller's bad input and nothing is stored.
            raise unstorable(exc) from None
        return await self.start_stored(
            temporal, user, batch, idempotency_key, storage, batch_id, request_id, len(batch.memories)
        )

    async def start_stored(
        self,
        temporal: Client,
        user: AuthenticatedUser,
        batch: BatchRequestIn,
        idempotency_key: str | None,
        storage: Storage,
        batch_id: str,
        request_id: str,
        total: int,
    ) -> tuple[BatchAccepted, bool] | None:
        """Start the stored request's workflow; None if that workflow id is taken by a dead batch."""
        submission = submission_of(user, batch, idempotency_key)
        try:
            workflow_id = await asyncio.wait_for(
                self._start(temporal, storage, request_id, batch_id, submission, batch), self._start_timeout_s
            )
        except WorkflowAlreadyStartedError:
            winner = await self._lost_race(user, request_id, batch_id, idempotency_key)
            return None if winner is None else (winner, True)
        except (TypeError, ValueError) as exc:
            # The SDK could not serialize the (legacy) input before sending anything: the caller's
            # bad input, and the start certainly did not land.
            await discard_unstarted(
                self.parse, request_id, f"workflow input not serializable: {type(exc).__name__}"
            )
            raise unstorable(exc) from None
        except (*TEMPORAL_CONNECT_ERRORS, ParseError) as exc:
            workflow_id = workflow_id_for(batch_id)
            # An answer lost on the way back does not mean the start failed: ask before deleting.
            exists = await workflow_exists(temporal, workflow_id)
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
                self._settler.settle_later(request_id, workflow_id)
                raise StartUnconfirmed() from exc
            if not exists:
                await discard_unstarted(self.parse, request_id, f"workflow not started: {type(exc).__name__}")
                raise start_failure(exc, self.settings) from exc
            log.warning(
                "start of %s raised %r but the workflow exists; accepting the batch", workflow_id, exc
            )
        return (
            BatchAccepted(
                batch_id=batch_id,
                workflow_id=workflow_id,
                storage=storage,
                total_memories=total,
                status_url=status_url(batch_id),
            ),
            False,
        )

    async def _start(
        self,
        temporal: Client,
        storage: Storage,
        request_id: str,
        batch_id: str,
        submission: store.Submission,
        batch: BatchRequestIn,
    ) -> str:
        if storage == "reference":
            # workflowId was stored at create; the worker records the run id (one write less here).
            return await start_batch_workflow_with_reference(
                temporal, self.parse, self.settings, request_id=request_id, batch_id=batch_id, record=False
            )
        return await start_legacy_batch_workflow(
            temporal,
            self.parse,
            self.settings,
            request_id=request_id,
            batch_id=batch_id,
            submission=submission,
            memories=batch.memories,
        )

    async def _lost_race(
        self, user: AuthenticatedUser, request_id: str, batch_id: str, key: str | None
    ) -> BatchAccepted | None:
        """``batch-<batch_id>`` exists already: drop ours, and answer with the batch that owns it.

        Either another submit with this key started it first (answer with that one), or it belongs
        to an earlier submission that is gone (None: the caller moves on to the key's next batch id).
        """
        # The slot stays with this submission: it moves on to the key's next batch id, or gives it back.
        await discard_unstarted(
            self.parse,
            request_id,
            "duplicate submission: another request with this idempotency key won",
            release=False,
        )
        winner = await self.keys.previous(user, key) if key is not None else None
        if winner is None or winner.batch_id != batch_id:
            if key is None:
                # A random uuid4 collided: practically impossible, and nothing to replay.
                raise IdempotencyConflict(STILL_STARTING)
            return None
        return accepted_from_request(winner)
