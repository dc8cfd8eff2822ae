"""Canary traffic, for real: many real Parse users submit mixed-size batches through the HTTP API.

Used by notebook 03 (``GENERATE_TRAFFIC=True`` on a local or staging stack) and by the runbook's soak
on a stack without users of its own. Nothing here decides a batch's path: the API does, from the live
flags and the user's canary bucket, exactly as for any client. The traffic only *predicts* the path
(:func:`toolkit.rollout.choose_storage`) so it can pick users on both sides and report a mismatch.

Users are spread over both paths on purpose: Kayenta compares a canary with a baseline of equal
size, because a judge fed 3 canary and 300 baseline batches mostly measures its own noise. So at
10 % the pool is grown (real sign-ups) until each path has ``min_users_per_path`` users, and batches
alternate between the two sides.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pandas as pd

from toolkit.parse import ParseClient
from toolkit.parse.users import ParseUser, sign_up
from toolkit.rollout import FLAGS_TTL_S, RolloutFlags, canary_bucket, choose_storage, read_flags, write_flags
from toolkit.settings import Settings
from toolkit.validation.batch_api import ApiCallFailed, BatchWaitTimeout, submit_batch, wait_for_batch
from toolkit.validation.workloads import chitchat_memories, synthetic_memories

__all__ = [
    "SUBMITTED_COLUMNS",
    "NotEnoughUsers",
    "TrafficPlan",
    "TrafficResult",
    "flags_at",
    "paths_for",
    "generate_traffic",
    "prepare_users",
]

SUBMITTED_COLUMNS = [
    "batch_id",
    "user_id",
    "bucket",
    "expected_storage",
    "storage",
    "size",
    "status",
    "successful",
    "failed",
    "submit_ms",
    "wait_ms",
    "error",
]
# Parse's createdAt comes from the Parse server's clock: widen the window so a second of skew
# between this machine and the server cannot drop the first or last batch.
CLOCK_MARGIN = timedelta(seconds=1)


class NotEnoughUsers(RuntimeError):
    """Sign-ups ran out before each path had enough users at this percentage."""


@dataclass(frozen=True)
class TrafficPlan:
    batches: int = 12
    batch_sizes: tuple[int, ...] = (5, 10, 20)
    # Distinct real users in the pool (grown further if a path lacks users at ``percent``).
    users: int = 6
    min_users_per_path: int = 2
    # Set the flags to on at this percentage first; None leaves the live flags as they are.
    percent: int | None = None
    # With ``percent``: put the flags back as they were afterwards.
    restore_flags: bool = True
    workload: Literal["chitchat", "synthetic"] = "chitchat"
    # Batches in flight at once (each one submitted, then polled until final).
    concurrency: int = 4
    batch_timeout_s: float = 300.0
    max_signups: int = 400
    seed: int = 0
    # After a flag change, wait this long so every API process has re-read the flags.
    settle_s: float = FLAGS_TTL_S

    def __post_init__(self) -> None:
        if self.batches < 1 or not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("need at least one batch and batch sizes >= 1")
        if self.concurrency < 1 or self.users < 1:
            raise ValueError("concurrency and users must be at least 1")


@dataclass(frozen=True)
class TrafficResult:
    since: datetime
    until: datetime
    submitted: pd.DataFrame  # SUBMITTED_COLUMNS, one row per batch
    flags_before: RolloutFlags
    flags_during: RolloutFlags
    flags_after: RolloutFlags

    @property
    def mismatched(self) -> pd.DataFrame:
        """Batches whose path differs from the one predicted from the flags (should be empty)."""
        s = self.submitted
        return s[s["storage"].notna() & (s["storage"] != s["expected_storage"])]


def paths_for(flags: RolloutFlags) -> set[str]:
    """The paths these flags send users to."""
    if not flags.use_parse_batch_storage or flags.canary_percent <= 0:
        return {"legacy"}
    if flags.canary_percent >= 100:
        return {"reference"}
    return {"legacy", "reference"}


async def prepare_users(
    parse: ParseClient,
    flags: RolloutFlags,
    *,
    count: int,
    min_per_path: int,
    max_signups: int = 400,
    existing: list[ParseUser] | None = None,
) -> list[ParseUser]:
    """At least ``count`` real users, and ``min_per_path`` on each path the flags route to."""
    users = list(existing or [])
    signups = 0

    def short() -> bool:
        have = {path: 0 for path in paths_for(flags)}
        for user in users:
            path = choose_storage(flags, user.object_id)
            if path in have:
                have[path] += 1
        return len(users) < count or any(n < min_per_path for n in have.values())

    while short():
        if signups >= max_signups:
            raise NotEnoughUsers(
                f"{signups} sign-ups gave too few users on a path at {flags.canary_percent}% "
                f"(need {min_per_path} per path)"
            )
        users.append(await sign_up(parse))
        signups += 1
    return users


def _memories(plan: TrafficPlan, size: int, index: int) -> list[dict[str, Any]]:
    seed = plan.seed * 100_000 + index
    if plan.workload == "synthetic":
        return synthetic_memories(size, seed=seed)
    return chitchat_memories(size, seed=seed)


def _assign(plan: TrafficPlan, users: list[ParseUser], flags: RolloutFlags) -> list[tuple[ParseUser, int]]:
    """(user, size) per batch: sizes mixed, users alternating between the paths."""
    rng = random.Random(plan.seed)
    sides: dict[str, list[ParseUser]] = {}
    for user in users:
        sides.setdefault(choose_storage(flags, user.object_id), []).append(user)
    for side in sides.values():
        rng.shuffle(side)
    order = sorted(sides)
    sizes = [plan.batch_sizes[i % len(plan.batch_sizes)] for i in range(plan.batches)]
    rng.shuffle(sizes)
    plan_rows = []
    for i, size in enumerate(sizes):
        side = sides[order[i % len(order)]]
        plan_rows.append((side[(i // len(order)) % len(side)], size))
    return plan_rows


async def _one(
    settings: Settings,
    plan: TrafficPlan,
    flags: RolloutFlags,
    user: ParseUser,
    size: int,
    index: int,
    limit: asyncio.Semaphore,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "batch_id": None,
        "user_id": user.object_id,
        "bucket": canary_bucket(user.object_id),
        "expected_storage": choose_storage(flags, user.object_id),
        "storage": None,
        "size": size,
        "status": None,
        "successful": None,
        "failed": None,
        "submit_ms": None,
        "wait_ms": None,
        "error": None,
    }
    memories = _memories(plan, size, index)
    async with limit:
        started = time.perf_counter()
        try:
            answer = await asyncio.to_thread(
                submit_batch, settings, memories=memories, session_token=user.session_token
            )
        except ApiCallFailed as exc:
            row.update(status="rejected", error=f"HTTP {exc.status_code}")
            return row
        row["submit_ms"] = (time.perf_counter() - started) * 1000
        row.update(batch_id=answer["batch_id"], storage=answer["storage"])
        started = time.perf_counter()
        try:
            final = await asyncio.to_thread(
                wait_for_batch,
                settings,
                answer["batch_id"],
                user.session_token,
                timeout_s=plan.batch_timeout_s,
            )
        except BatchWaitTimeout as exc:
            row.update(status="timeout", error=str(exc))
            return row
        row["wait_ms"] = (time.perf_counter() - started) * 1000
        row.update(status=final["status"], successful=final["successful"], failed=final["failed"])
    return row


class _Progress:
    """A line about every tenth of the batches (and the last), for a cell that runs for minutes."""

    def __init__(self, total: int, log: Callable[[str], None] | None) -> None:
        self.total, self.log, self.done = total, log, 0
        self.paths: dict[str, int] = {}
        self.started = time.perf_counter()
        self.every = max(2, total // 10)

    def finished(self, row: dict[str, Any]) -> None:
        self.done += 1
        path = str(row["storage"] or row["status"])
        self.paths[path] = self.paths.get(path, 0) + 1
        if self.log is not None and (self.done % self.every == 0 or self.done == self.total):
            by_path = ", ".join(f"{n} {p}" for p, n in sorted(self.paths.items()))
            self.log(
                f"traffic: {self.done}/{self.total} batches final ({by_path}) "
                f"after {time.perf_counter() - self.started:.0f} s"
            )


@asynccontextmanager
async def flags_at(
    parse: ParseClient, settings: Settings, percent: int | None, *, restore: bool = True, settle_s: float
) -> AsyncIterator[tuple[RolloutFlags, RolloutFlags]]:
    """The flags on at ``percent`` for the block (None: as they are), then back as found if ``restore``
    (also on error). Yields (before, during); waits ``settle_s`` after a change so that every API process
    has re-read them."""
    before = await read_flags(parse, settings)
    during = before
    try:
        if percent is not None:
            during = await write_flags(parse, settings, enabled=True, percent=percent)
            if during != before:
                await asyncio.sleep(settle_s)
        yield before, during
    finally:
        if percent is not None and restore and during != before:
            await write_flags(
                parse, settings, enabled=before.use_parse_batch_storage, percent=before.canary_percent
            )


async def generate_traffic(
    settings: Settings,
    plan: TrafficPlan,
    *,
    users: list[ParseUser] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrafficResult:
    """Submit ``plan.batches`` batches through the API and wait until each is final.

    Returns the window ``[since, until)`` that holds them (for
    :func:`toolkit.validation.metrics.collect_batches`) and one row per batch. ``users`` reuses a pool
    (it is grown when a path lacks users). ``progress`` gets a line about every tenth of the batches.
    """
    async with ParseClient(settings) as parse:
        async with flags_at(
            parse, settings, plan.percent, restore=plan.restore_flags, settle_s=plan.settle_s
        ) as (before, during):
            pool = await prepare_users(
                parse,
                during,
                count=plan.users,
                min_per_path=plan.min_users_per_path,
                max_signups=plan.max_signups,
                existing=users,
            )
            if users is not None:
                users[:] = pool  # the caller's pool keeps the new sign-ups
            since = datetime.now(UTC) - CLOCK_MARGIN
            limit = asyncio.Semaphore(plan.concurrency)
            tracker = _Progress(plan.batches, progress)

            async def one(index: int, user: ParseUser, size: int) -> dict[str, Any]:
                row = await _one(settings, plan, during, user, size, index, limit)
                tracker.finished(row)
                return row

            rows = await asyncio.gather(
                *(one(i, user, size) for i, (user, size) in enumerate(_assign(plan, pool, during)))
            )
            until = datetime.now(UTC) + CLOCK_MARGIN
        after = await read_flags(parse, settings)
    return TrafficResult(
        since=since,
        until=until,
        submitted=pd.DataFrame(rows, columns=SUBMITTED_COLUMNS),
        flags_before=before,
        flags_during=during,
        flags_after=after,
    )
