"""Progress and errors of one activity attempt, written to Parse in the background.

:class:`AttemptProgress` tracks which memories finished and the contiguous checkpoint a retry resumes
from; :class:`ProgressReporter` writes errors, then progress, off the memory writer's path, and says
which checkpoint is safe to heartbeat (never one past an error that is not recorded yet).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from toolkit.parse.memory_writer import WriteOutcome
from toolkit.temporal.batch_types import Checkpoint

__all__ = [
    "PROGRESS_EVERY_MEMORIES",
    "PROGRESS_EVERY_S",
    "PROGRESS_MIN_GAP_S",
    "AttemptProgress",
    "CheckpointSink",
    "ErrorWriter",
    "ProgressReporter",
    "ProgressWriter",
]

log = logging.getLogger(__name__)

# Progress and errors are written in the background (issue 10), never on the writer's path: a write
# starts once PROGRESS_EVERY_MEMORIES memories finished since the last one, or PROGRESS_EVERY_S passed,
# with at most one write in flight per activity (so under a slow Parse the writes space out, they
# never queue up).
PROGRESS_EVERY_MEMORIES = 10
PROGRESS_EVERY_S = 1.0
# ... but not sooner than this after the attempt began or the last write: a small batch written in
# less time gets its counters from the completion write alone, one Parse write fewer (issue 19).
PROGRESS_MIN_GAP_S = 0.25


class AttemptProgress:
    """Tracks one attempt: the contiguous checkpoint, the counters, and when Parse was last told."""

    def __init__(self, start: Checkpoint, total: int) -> None:
        self.checkpoint = start
        self.total = total
        self.done: dict[int, bool] = {}  # index -> ok, for indexes at or past the checkpoint
        self.ok = start.ok
        self.failed = start.failed
        self.reported = start.ok + start.failed  # counts, not an index: a chunk starts mid-batch
        self.reported_at = time.monotonic()

    @property
    def processed(self) -> int:
        return self.ok + self.failed

    def record(self, outcomes: list[WriteOutcome]) -> None:
        for outcome in outcomes:
            self.done[outcome.index] = outcome.ok
            if outcome.ok:
                self.ok += 1
            else:
                self.failed += 1
        # Advance the checkpoint over the contiguous prefix of finished indexes.
        cp = self.checkpoint
        next_index, ok, failed = cp.next, cp.ok, cp.failed
        while next_index in self.done:
            if self.done.pop(next_index):
                ok += 1
            else:
                failed += 1
            next_index += 1
        self.checkpoint = Checkpoint(next_index, ok, failed)

    def report_due(self) -> bool:
        since_s = time.monotonic() - self.reported_at
        if since_s < PROGRESS_MIN_GAP_S:
            return False
        return self.processed - self.reported >= PROGRESS_EVERY_MEMORIES or since_s >= PROGRESS_EVERY_S

    def mark_reported(self, processed: int) -> None:
        self.reported = processed
        self.reported_at = time.monotonic()


ErrorWriter = Callable[[list[tuple[int, str | None]]], Awaitable[None]]
ProgressWriter = Callable[[int, int, int], Awaitable[bool]]
# Told the safe checkpoint whenever it may have moved (the activity heartbeats it).
CheckpointSink = Callable[[Checkpoint], None]


class ProgressReporter:
    """Records errors and progress in Parse in the background, and says which checkpoint is safe.

    The writer only calls :meth:`record`, which never waits for Parse. A background task writes the
    errors, then the progress. The checkpoint heartbeated (:attr:`safe`) never runs ahead of the
    recorded errors: it is the live checkpoint while no error waits to be written, else the one
    taken when the last written errors were collected. So a retry resuming from it never skips a
    failure that was not recorded (it may record one twice; readers keep one entry per index).
    """

    def __init__(
        self,
        progress: AttemptProgress,
        write_errors: ErrorWriter,
        write_progress: ProgressWriter,
        on_safe: CheckpointSink,
    ) -> None:
        self.progress = progress
        self.safe = progress.checkpoint
        self._write_errors = write_errors
        self._write_progress = write_progress
        self._on_safe = on_safe
        self._unrecorded: list[tuple[int, str | None]] = []
        self._in_flight = 0  # errors taken by a write that has not finished
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    def _beat(self) -> None:
        self._on_safe(self.safe)

    async def record(self, outcomes: list[WriteOutcome]) -> None:
        self._unrecorded.extend((o.index, o.error) for o in outcomes if not o.ok)
        self.progress.record(outcomes)
        if not self._unrecorded and not self._in_flight:
            self.safe = self.progress.checkpoint
        self._beat()  # throttled by the SDK (the worker sends one a second at most)
        if self._unrecorded or self.progress.report_due():
            self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                # arrives as the event is set, and the loop would never stop.
                async with asyncio.timeout(PROGRESS_EVERY_S):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.flush()
            except Exception as exc:  # Parse away for a moment: the next round tries again
                log.warning("background progress write failed (retried): %s", exc)
            self._beat()

    async def flush(self) -> None:
        """Write the waiting errors, then the progress; raise if Parse refuses (nothing is lost)."""
        errors, self._unrecorded = self._unrecorded, []
        snapshot = self.progress.checkpoint
        counts = (self.progress.processed, self.progress.ok, self.progress.failed)
        if errors:
            self._in_flight += len(errors)
            try:
                await self._write_errors(errors)
            except BaseException:
                self._unrecorded[:0] = errors
                raise
            finally:
                self._in_flight -= len(errors)
        # Every index below the snapshot had finished, so its error was in `errors` or written before.
        if snapshot.next > self.safe.next:
            self.safe = snapshot
        if not self._unrecorded and not self._in_flight:
            self.safe = self.progress.checkpoint
        if counts[0] > self.progress.reported:
            await self._write_progress(*counts)
            self.progress.mark_reported(counts[0])

    async def close(self) -> None:
        """Stop the background task and write what is left; raises if the final write fails."""
        await self.abandon()
        await self.flush()
        self._beat()

    async def abandon(self) -> None:
        """Stop the background task (it finishes the write it is in, if any)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            await asyncio.gather(task, return_exceptions=True)
