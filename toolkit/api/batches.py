"""The logic behind the batch routes, assembled: :class:`BatchService` is what the app holds.

A submission crosses these modules (each says more in its own docstring):

- :mod:`toolkit.api.body` reads and validates the body as it arrives, and hands a batch bigger than one
  chunk to :mod:`toolkit.api.streamed`, which stores it chunk by chunk;
- :mod:`toolkit.api.submission` checks (replay, in-flight slot, rollout path, legacy input size, Temporal
  reachable), stores the batch in Parse and starts its workflow;
- :mod:`toolkit.api.in_flight` takes, gives back and repairs the in-flight slots (MAX_BATCHES_IN_FLIGHT);
- :mod:`toolkit.api.idempotency` answers what an ``Idempotency-Key`` already did;
- :mod:`toolkit.api.start_settling` settles starts Temporal could not confirm, and discards requests
  that will never run;
- :mod:`toolkit.api.reads` answers status and errors to the batch's owner;
- :mod:`toolkit.api.failures` turns a backend failure into a generic answer (the cause is logged).
"""

from __future__ import annotations

from starlette.requests import Request

from toolkit.api.auth import AuthenticatedUser
from toolkit.api.idempotency import IdempotencyKeys
from toolkit.api.in_flight import InFlightCap
from toolkit.api.reads import BatchReader
from toolkit.api.schemas import BatchAccepted, BatchErrorsPage, BatchRequestIn, BatchStatusOut
from toolkit.api.start_settling import StartSettler
from toolkit.api.streamed import submit_streamed
from toolkit.api.submission import BatchSubmitter
from toolkit.api.temporal_connection import TemporalConnection
from toolkit.parse import ParseClient
from toolkit.rollout import RolloutReader
from toolkit.settings import Settings


class BatchService:
    def __init__(
        self, settings: Settings, parse: ParseClient, temporal: TemporalConnection, rollout: RolloutReader
    ) -> None:
        # An unstarted request older than this is an orphan (its API crashed): the start timeout,
        # plus as long again for the store that precedes it (toolkit.api.idempotency.ORPHAN_AFTER_S).
        orphan_after_s = 2 * settings.api_start_timeout_s
        self._settler = StartSettler(parse, temporal, orphan_after_s=orphan_after_s)
        keys = IdempotencyKeys(settings, parse, temporal, orphan_after_s=orphan_after_s)
        cap = InFlightCap(settings, parse, temporal, orphan_after_s=orphan_after_s)
        self._submitter = BatchSubmitter(settings, parse, temporal, rollout, keys, self._settler, cap)
        self._reader = BatchReader(parse)

    async def submit(
        self, user: AuthenticatedUser, batch: BatchRequestIn, idempotency_key: str | None
    ) -> tuple[BatchAccepted, bool]:
        """Store and start a batch already read whole; return the 202 answer and whether it is a replay."""
        return await self._submitter.submit(user, batch, idempotency_key)

    async def submit_streamed(
        self, user: AuthenticatedUser, http_request: Request, idempotency_key: str | None
    ) -> tuple[BatchAccepted, bool]:
        """Read the body of ``http_request`` as it arrives, then store and start it."""
        return await submit_streamed(self._submitter, user, http_request, idempotency_key)

    async def status(self, user: AuthenticatedUser, batch_id: str) -> BatchStatusOut:
        return await self._reader.status(user, batch_id)

    async def errors(
        self, user: AuthenticatedUser, batch_id: str, offset: int, limit: int
    ) -> BatchErrorsPage:
        return await self._reader.errors(user, batch_id, offset, limit)

    async def aclose(self) -> None:
        await self._settler.aclose()
