"""An activity's heartbeat from its first action to its last, and outages waited out inside it.

Temporal's retry policy is the give-up budget for real failures (a worker that died, a bug): a chunk
activity gets 20 attempts, a step 10. An outage of the batch store is not such a failure, and used to
spend that budget in minutes: a Parse outage of ten minutes ended a chunked batch ``partial`` although
Parse came back (issue 17). So an activity meets an outage without failing: it keeps heartbeating,
waits with backoff, and runs its step again from its checkpoint (every write is idempotent), for as
long as one outage lasts up to ``OUTAGE_RETRY_S`` (hours). Only past that does it give up, with a
failure whose type says why (:data:`OUTAGE_TOO_LONG`); the workflow then marks the batch as it always
did, and the owner reads the reason.

What counts as an outage: :class:`~toolkit.parse.errors.ParseUnavailable`, which the Parse client raises
after its own quick retries when Parse is unreachable, times out or answers 5xx, and which the memory
writer raises when Parse answers a ``/batch`` item with a database code (PostgreSQL down or restarting
behind Parse: ``ECONNREFUSED``, ``57P03``, …). Temporal being down needs nothing here: the workflow waits
for the server, and an activity whose heartbeats could not reach it is retried from its checkpoint
(one attempt per outage, whatever its length).

The heartbeat starts with the activity, before its first download, so a slow download of a full chunk
never looks like a dead worker. Its details carry the activity's checkpoint and, during an outage, when
the outage began, so an attempt that starts during the same outage (its worker restarted, say) goes on
counting from there. The first one is sent a second in (``FIRST_BEAT_AFTER_S``), not at once: most
activities of a small batch end sooner, and a heartbeat is a call to Temporal that the server
persists (issue 19). A second is well inside the 20 s heartbeat timeout, and the checkpoint was
never fresher than that: the worker sends at most one heartbeat a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from toolkit.parse.errors import ParseUnavailable
from toolkit.temporal.batch_types import Checkpoint
from toolkit.temporal.failure_text import OUTAGE_TOO_LONG

__all__ = [
    "FIRST_BEAT_AFTER_S",
    "HEARTBEAT_EVERY_S",
    "OUTAGE_TOO_LONG",
    "ActivityHeartbeat",
    "outlast_outages",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# The heartbeat loop's period (the worker sends at most one a second to the server).
HEARTBEAT_EVERY_S = 5.0
# No heartbeat in an attempt's first second: an activity that ends sooner sends none.
FIRST_BEAT_AFTER_S = 1.0
# Waits between the runs of a step during one outage: 1 s, doubling, at most 30 s.
FIRST_WAIT_S = 1.0
MAX_WAIT_S = 30.0


class ActivityHeartbeat:
    """Heartbeats the activity every few seconds while it is open, from its very first action.

    ``checkpoint`` (set by the activity as it makes progress) and ``outage_since`` (the wall-clock time
    an outage began, None while Parse answers) are the details sent, and what a later attempt reads back.
    """

    def __init__(self, details: Sequence[Any]) -> None:
        restored = details[0] if details and isinstance(details[0], dict) else {}
        self.checkpoint: Checkpoint | None = Checkpoint.from_details(details)
        since = restored.get("outage_since")
        self.outage_since: float | None = float(since) if isinstance(since, int | float) else None
        self._task: asyncio.Task[None] | None = None
        self._first_beat_at = time.monotonic() + FIRST_BEAT_AFTER_S

    @classmethod
    def of_this_attempt(cls) -> ActivityHeartbeat:
        """Started from what the previous attempt of this activity heartbeated, if any."""
        return cls(activity.info().heartbeat_details)

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = self.checkpoint.as_details() if self.checkpoint is not None else {}
        if self.outage_since is not None:
            details["outage_since"] = self.outage_since
        return details

    def beat(self) -> None:
        if time.monotonic() < self._first_beat_at:
            return  # the loop's first beat, at FIRST_BEAT_AFTER_S, carries the latest details
        activity.heartbeat(self.details())

    def advance(self, checkpoint: Checkpoint) -> None:
        """The activity's safe checkpoint moved: record it and send it (the SDK throttles the sends)."""
        self.checkpoint = checkpoint
        self.beat()

    def reachable(self) -> None:
        """Parse answered: whatever outage this attempt was counting is over."""
        self.outage_since = None

    async def _loop(self) -> None:
        await asyncio.sleep(max(0.0, self._first_beat_at - time.monotonic()))
        while True:
            self.beat()
            await asyncio.sleep(HEARTBEAT_EVERY_S)

    async def __aenter__(self) -> ActivityHeartbeat:
        self._first_beat_at = time.monotonic() + FIRST_BEAT_AFTER_S
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if error is not None:
            # Handed back (worker shutdown) or failing: the next attempt resumes from what this one
            # reached, even within its first second. The SDK hands these details to the server with the
            # failure.
            activity.heartbeat(self.details())


async def outlast_outages(
    step: Callable[[], Awaitable[T]], heartbeat: ActivityHeartbeat, *, limit_s: float | None, what: str
) -> T:
    """Run ``step`` until it finishes, running it again after each outage; give up after ``limit_s``.

    ``step`` starts from ``heartbeat.checkpoint`` each time and calls ``heartbeat.reachable()`` once
    Parse has answered it. ``limit_s`` None waits however long it takes (marking a batch failed: giving
    up there would leave it ``processing`` for good). Any other exception propagates at once, to
    Temporal's retry policy.
    """
    wait_s = FIRST_WAIT_S
    while True:
        try:
            return await step()
        except ParseUnavailable as exc:
            now = time.time()
            if heartbeat.outage_since is None:
                heartbeat.outage_since = now  # a new outage: count from here, back off from the start
                wait_s = FIRST_WAIT_S
            down_s = now - heartbeat.outage_since
            if limit_s is not None and down_s >= limit_s:
                log.error("%s: Parse unavailable for %.0f s, past OUTAGE_RETRY_S; giving up", what, down_s)
                raise ApplicationError(
                    f"{what}: Parse unavailable for {down_s:.0f} s, "
                    f"past OUTAGE_RETRY_S ({limit_s:.0f} s): {exc}",
                    type=OUTAGE_TOO_LONG,
                    non_retryable=True,
                ) from exc
            pause_s = wait_s if limit_s is None else min(wait_s, limit_s - down_s)
            log.warning("%s: Parse unavailable for %.0f s (%s); again in %.0f s", what, down_s, exc, pause_s)
            heartbeat.beat()
            await asyncio.sleep(pause_s)
            wait_s = min(wait_s * 2, MAX_WAIT_S)
