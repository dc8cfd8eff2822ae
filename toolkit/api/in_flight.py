"""``MAX_BATCHES_IN_FLIGHT``, exact across API processes: a slot per batch, from its store to its end.

:mod:`toolkit.parse.in_flight` holds the mechanism (numbered slots whose objectIds Parse keeps
unique). Here the API takes a slot before it stores anything of a batch (a streamed upload: when its
first chunk fills), answers 429 when none is free, and gives it back on every ending it owns: a
refusal, a failed store or start, a replayed answer. Once the batch's request exists the request
holds the slot, and whoever ends the batch gives it back (the worker on completion or failure,
:func:`~toolkit.api.start_settling.discard_unstarted` for a start that never landed).

A process can die holding a slot (an API process between taking it and creating the request, a
worker between finishing a batch and giving its slot back). When a user reaches the cap,
:meth:`InFlightCap.repair` frees each slot whose holder is provably gone before answering 429.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import UTC, datetime

from toolkit.api.auth import AuthenticatedUser
from toolkit.api.errors import StartUnconfirmed, TooManyRequests
from toolkit.api.failures import storage_failure
from toolkit.api.schemas import BatchAccepted
from toolkit.api.start_settling import discard_unstarted, stored_for_s, workflow_exists
from toolkit.api.temporal_connection import TemporalConnection, TemporalUnavailable
from toolkit.parse import ParseClient, in_flight
from toolkit.parse import batch_requests as store
from toolkit.parse.errors import ParseError
from toolkit.parse.in_flight import SlotHold, SlotsTaken
from toolkit.parse.models import FINISHED_STATUSES, BatchMemoryRequest
from toolkit.settings import Settings
from toolkit.temporal.starter import workflow_id_for

log = logging.getLogger(__name__)

# Retry-After of a 429 for too many batches in flight: a small batch finishes in seconds.
IN_FLIGHT_RETRY_AFTER_S = 10


class InFlightCap:
    """Takes, gives back and repairs the in-flight slots of the API's users."""

    def __init__(
        self, settings: Settings, parse: ParseClient, temporal: TemporalConnection, *, orphan_after_s: float
    ) -> None:
        self._cap = settings.max_batches_in_flight
        self._parse = parse
        self._temporal = temporal
        # A pending request never started after this long is an orphan (see toolkit.api.idempotency).
        self._orphan_after_s = orphan_after_s

    async def take(self, user: AuthenticatedUser, *, batch_id: str | None = None) -> SlotHold:
        """A slot for one more batch of ``user``; 429 when all are held, even after a repair."""
        try:
            try:
                return await in_flight.take_slot(self._parse, user.user_id, self._cap, batch_id=batch_id)
            except SlotsTaken:
                if not await self.repair(user.user_id):
                    raise
                return await in_flight.take_slot(self._parse, user.user_id, self._cap, batch_id=batch_id)
        except SlotsTaken as full:
            log.info("user %s refused: %d batches in flight (limit %d)", user.user_id, full.held, full.cap)
            raise TooManyRequests(
                f"too many batches in flight: {full.held}; the limit is {full.cap} per user. "
                "Retry once one of them has finished.",
                retry_after_s=IN_FLIGHT_RETRY_AFTER_S,
            ) from None
        except ParseError as exc:
            raise storage_failure(exc) from exc

    async def give_back(self, hold: SlotHold) -> None:
        await store.release_slot(self._parse, hold.token)

    async def holding(
        self, hold: SlotHold, submission: Awaitable[tuple[BatchAccepted, bool]]
    ) -> tuple[BatchAccepted, bool]:
        """Run ``submission`` (store and start a batch under ``hold``); give the slot back unless the batch
        is now in flight: accepted, or stored with its start unconfirmed (the kept request holds it)."""
        try:
            accepted, replayed = await submission
        except StartUnconfirmed:
            raise
        except BaseException:
            await self.give_back(hold)
            raise
        if replayed:
            # Answered with an earlier batch (the one that won this Idempotency-Key): ours is not in flight.
            await self.give_back(hold)
        return accepted, replayed

    async def repair(self, user_id: str) -> int:
        """Free every slot of the user whose holder is gone; return how many were freed.

        A slot's holder is gone when its request finished (its release was lost), when no request
        holds it and its hold went untouched past ``HOLD_STALE_AFTER_S`` (the storing process died),
        or when its request is a pending one whose workflow Temporal says never started (the API died
        before starting it): that request is discarded like any other that will never run.
        """
        freed = 0
        now = datetime.now(UTC)
        for hold in await in_flight.holds_of(self._parse, user_id):
            request = await store.find_request_holding(self._parse, hold.token)
            if request is not None and await self._never_started(request):
                assert request.object_id is not None
                log.warning("in-flight repair: request %s never started; discarding it", request.object_id)
                await discard_unstarted(self._parse, request.object_id, "workflow never started")
                freed += 1
                continue
            gone = (request is None and hold.stale(now)) or (
                request is not None and request.status in FINISHED_STATUSES
            )
            if gone and await in_flight.release(self._parse, hold.token):
                log.warning("in-flight repair: freed slot %s of user %s (holder gone)", hold.slot, user_id)
                freed += 1
        return freed

    async def _never_started(self, request: BatchMemoryRequest) -> bool:
        if request.status != "pending" or request.workflow_run_id:
            return False
        if stored_for_s(request) <= self._orphan_after_s:
            return False  # its start may still be in flight
        try:
            temporal = await self._temporal.client()
        except TemporalUnavailable:
            return False
        return await workflow_exists(temporal, workflow_id_for(request.batch_id)) is False
