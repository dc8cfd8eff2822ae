"""What a small batch's activity no longer sends (issue 19): no heartbeat, no mid-way progress write.

A heartbeat is a call to Temporal that the server persists; a progress write is a Parse round trip.
An activity that ends within its first second sends neither; a longer one still checkpoints and
reports as before. The heartbeat is observed through the SDK's own activity test environment, which
runs the activity code in a real activity context and hands each heartbeat to a callback.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from toolkit.temporal.batch_types import Checkpoint
from toolkit.temporal.outages import FIRST_BEAT_AFTER_S, ActivityHeartbeat
from toolkit.temporal.progress import PROGRESS_MIN_GAP_S, AttemptProgress


async def test_an_activity_heartbeats_after_its_first_second_with_the_latest_checkpoint() -> None:
    beats: list[tuple[Any, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)

    async def activity_body() -> list[tuple[Any, ...]]:
        async with ActivityHeartbeat.of_this_attempt() as heartbeat:
            heartbeat.advance(Checkpoint(50, 50, 0))
            await asyncio.sleep(0)  # let the heartbeat loop run its first step
            sent_at_once = list(beats)
            heartbeat.advance(Checkpoint(100, 99, 1))
            deadline = time.monotonic() + FIRST_BEAT_AFTER_S + 10
            while not beats and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        return sent_at_once

    sent_at_once = await env.run(activity_body)
    assert sent_at_once == [], "a heartbeat went out before the first second was up"
    assert beats, "no heartbeat after the first second"
    assert beats[0] == ({"next": 100, "ok": 99, "failed": 1},)


async def test_an_activity_that_ends_within_its_first_second_sends_no_heartbeat() -> None:
    beats: list[tuple[Any, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)

    async def activity_body() -> None:
        async with ActivityHeartbeat.of_this_attempt() as heartbeat:
            for n in range(1, 11):
                heartbeat.advance(Checkpoint(n * 10, n * 10, 0))
                await asyncio.sleep(0)

    await env.run(activity_body)
    assert beats == []


async def test_progress_is_due_only_once_the_minimum_gap_has_passed() -> None:
    progress = AttemptProgress(Checkpoint(), total=100)
    progress.ok = 50  # half the batch written at once, as two /batch calls of 50 do
    assert not progress.report_due(), "a progress write was due before the minimum gap"
    await asyncio.sleep(PROGRESS_MIN_GAP_S + 0.05)
    assert progress.report_due()
    progress.mark_reported(progress.processed)
    assert not progress.report_due()


async def test_an_attempt_that_fails_within_its_first_second_still_hands_over_its_checkpoint() -> None:
    """Handed back at a worker's shutdown (or failing) before the first heartbeat: the details go with the
    failure, so the next attempt resumes where this one was, not from the start."""
    beats: list[tuple[Any, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)

    async def activity_body() -> None:
        async with ActivityHeartbeat.of_this_attempt() as heartbeat:
            heartbeat.advance(Checkpoint(30, 30, 0))
            raise asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError):
        await env.run(activity_body)
    assert beats == [({"next": 30, "ok": 30, "failed": 0},)]
