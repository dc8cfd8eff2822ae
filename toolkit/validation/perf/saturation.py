"""Many batches at once (issue 19): throughput at saturation beside writing directly, and what a batch costs.

A run is a series of rounds that take turns, so a burst of load from elsewhere lands on all of them:

- **direct**: the memories of the next rounds written straight into Parse's ``/batch`` (50 per call,
  4 in flight) by the service's memory writer, from this process: no API, no Temporal. The ceiling for
  this machine, measured in the same run. They are deleted again after the round (outside its window).
- **a path round**: N submitters, each a real Parse user whose canary bucket puts it on the path
  (``reference`` or ``legacy``), submit batches back to back through the API over HTTP and wait for each
  to finish, either polling ``GET /v1/batch/{id}/status`` every ``poll_interval_s`` or waiting for the
  completion webhook (a real receiver in this process).

The API and worker are a variant (:mod:`toolkit.validation.perf.variants`): processes of their own on their
own task queue, so nothing else works on the queue and their pids are known. PostgreSQL, Parse and Temporal
are the stack's.

Per round: memories/s and the ratio to the direct round just before it; CPU seconds per batch of each
process from ``/proc`` (``client`` is this process); Parse requests and Temporal calls per batch as the
servers counted them (:mod:`toolkit.validation.perf.server_counts`), with the API's own share read from the
``Server-Timing`` counts of its answers (the rest is the worker's). Every figure is per batch of
``memories_per_batch`` memories; a direct round's "per batch" is per as many memories.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from toolkit.parse import ParseClient
from toolkit.parse.memory_writer import MemoryWriter, WriteContext, delete_memories
from toolkit.parse.models import FINISHED_STATUSES, MemoryItem
from toolkit.parse.users import ParseUser
from toolkit.rollout import RolloutFlags, choose_storage, read_flags, write_flags
from toolkit.settings import Settings
from toolkit.timing import HEADER, parse_counts
from toolkit.validation.perf import procstats, server_counts
from toolkit.validation.perf.scale_out import MAX_WORKERS
from toolkit.validation.perf.variants import RunningVariant, Variant, running
from toolkit.validation.traffic import prepare_users
from toolkit.validation.webhook_receiver import ReceivedRequest, WebhookReceiver
from toolkit.validation.workloads import make_memories

PathName = Literal["reference", "legacy"]
PATHS: tuple[PathName, ...] = ("reference", "legacy")
DIRECT = "direct"
# The processes whose CPU is summed as "the servers" (the client is this measuring process).
SERVER_PARTS = ("api", "worker", "parse", "postgres", "temporal")
MAX_SUBMITTERS = 64
MAX_BATCHES_PER_SUBMITTER = 100
# The direct round builds the memories of the highest level's batches in memory, all at once.
MAX_MEMORIES_PER_ROUND = 1_000_000
MAX_DIRECT_BATCH_SIZE = 100  # Parse's batchRequestLimit on the local stack (PARSE_BATCH_REQUEST_LIMIT)
MAX_BATCH_TIMEOUT_S = 24 * 3600.0
MAX_SIGNUPS = 2000
# The stack's own servers watched for CPU; the API and worker(s) are the variant's.
STACK_SERVERS = ("parse", "postgres", "temporal")
# This process started the variant's API and worker: counted with its descendants it would count them twice.
CLIENT_ALONE = frozenset({"client"})
HTTP_TIMEOUT_S = 120.0


class SaturationError(Exception):
    """The run cannot measure what it claims (a batch on the wrong path, a missing counter)."""


class PlanError(ValueError):
    """A value of the plan out of its range; ``name`` is the plan's field, ``value`` the value refused."""

    def __init__(self, name: str, value: object, allowed: str) -> None:
        super().__init__(f"{name} takes {allowed}, got {value!r}")
        self.name = name
        self.value = value
        self.allowed = allowed


def _check_range(name: str, value: int, low: int, high: int | None = None) -> None:
    if value < low or (high is not None and value > high):
        raise PlanError(name, value, f"{low:,} or more" if high is None else f"{low:,}-{high:,}")


def _check_seconds(name: str, value: float, high: float) -> None:
    if not (math.isfinite(value) and 0 < value <= high):
        raise PlanError(name, value, f"a number of seconds above 0 and at most {high:g}")


@dataclass(frozen=True)
class SaturationPlan:
    concurrency: tuple[int, ...] = (1, 4, 16)  # submitters per round, one level after the other
    paths: tuple[PathName, ...] = PATHS
    batches_per_submitter: int = 3
    memories_per_batch: int = 100
    poll_interval_s: float = 0.25
    # Paths measured once more at the highest concurrency, waiting for webhooks instead of polling.
    webhook_paths: tuple[PathName, ...] = ("reference",)
    direct_batch_size: int = 50  # memories per /batch call of the direct round
    direct_in_flight: int = 4
    workload: str = "chitchat"
    batch_timeout_s: float = 600.0
    workers: int = 1

    def __post_init__(self) -> None:
        for level in self.concurrency:
            _check_range("concurrency", level, 1, MAX_SUBMITTERS)
        if not self.concurrency:
            raise PlanError("concurrency", [], f"one or more levels of 1-{MAX_SUBMITTERS}")
        if not self.paths or not set(self.paths) <= set(PATHS):
            raise PlanError("paths", list(self.paths), f"one or more of {', '.join(PATHS)}")
        if not set(self.webhook_paths) <= set(PATHS):
            raise PlanError("webhook_paths", list(self.webhook_paths), f"any of {', '.join(PATHS)}")
        _check_range("batches_per_submitter", self.batches_per_submitter, 1, MAX_BATCHES_PER_SUBMITTER)
        _check_range("memories_per_batch", self.memories_per_batch, 1)  # its maximum: check_batch_size
        _check_range("workers", self.workers, 1, MAX_WORKERS)
        _check_range("direct_batch_size", self.direct_batch_size, 1, MAX_DIRECT_BATCH_SIZE)
        _check_range("direct_in_flight", self.direct_in_flight, 1, MAX_SUBMITTERS)
        _check_seconds("batch_timeout_s", self.batch_timeout_s, MAX_BATCH_TIMEOUT_S)
        _check_seconds("poll_interval_s", self.poll_interval_s, self.batch_timeout_s)
        # The direct round holds all of a round's memories at once.
        per_round = max(self.concurrency) * self.batches_per_submitter * self.memories_per_batch
        _check_range("memories_per_round", per_round, 1, MAX_MEMORIES_PER_ROUND)

    def rounds(self) -> list[Round]:
        """The rounds in the order they run: per level a direct round, then each path; webhooks last."""
        rounds: list[Round] = []
        for level in self.concurrency:
            rounds.append(Round(DIRECT, "", level))
            rounds += [Round(path, "poll", level) for path in self.paths]
        rounds += [Round(path, "webhook", max(self.concurrency)) for path in self.webhook_paths]
        return rounds

    @property
    def percent(self) -> int:
        """The canary percentage that puts users on every path of the plan."""
        wanted = set(self.paths) | set(self.webhook_paths)
        return 50 if wanted == set(PATHS) else 100 if wanted == {"reference"} else 0


def check_batch_size(memories_per_batch: int, settings: Settings) -> None:
    """Batches the API takes: 1 up to its ``MAX_BATCH_MEMORIES`` (larger ones would all be refused)."""
    _check_range("memories_per_batch", memories_per_batch, 1, settings.max_batch_memories)


@dataclass(frozen=True)
class Round:
    kind: str  # "direct", "reference" or "legacy"
    wait: str  # "poll" or "webhook"; "" for a direct round
    submitters: int

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.wait}-{self.submitters}" if self.wait else f"{self.kind}-{self.submitters}"


@dataclass(frozen=True)
class BatchOutcome:
    """One batch of a path round, as the client saw it."""

    batch_id: str | None
    storage: str | None
    status: str  # the final status, or "refused" / "timeout" / "error" (a transport error)
    successful: int
    polls: int  # status requests this client made for it
    # Round trips the API reported (Server-Timing counts) answering this batch's submit and polls:
    # "parse.POST.files" → 1, "temporal.start" → 1, …
    api_spans: Counter[str] = field(default_factory=Counter)
    error: str | None = None


@dataclass(frozen=True)
class SaturationRow:
    path: str  # "direct", "reference" or "legacy"
    wait: str  # "poll", "webhook", "" (direct)
    submitters: int  # batches in flight at once (direct: the memories of that many submitters' batches)
    batches: int  # batches submitted (direct: batch-sized units written)
    completed: int  # batches that ended "completed" (direct: units written whole)
    memories: int  # memories written successfully
    seconds: float
    memories_per_s: float
    vs_direct: float | None = None  # memories_per_s / that of the direct round before it
    direct_memories_per_s: float | None = None
    cpu_s_per_batch: dict[str, float] = field(default_factory=dict)  # process → CPU seconds per batch
    parse_requests_per_batch: float = 0.0
    parse_requests: dict[str, int] = field(default_factory=dict)  # "POST batch" → requests in the round
    parse_requests_by_api_per_batch: float = 0.0
    api_spans: dict[str, int] = field(default_factory=dict)  # Server-Timing name → round trips in the round
    parse_batch_subrequests: dict[str, int] = field(default_factory=dict)  # "POST classes/Memory" → count
    temporal_calls_per_batch: float = 0.0  # work calls (starts, completions, heartbeats): no long polls
    temporal_calls: dict[str, int] = field(default_factory=dict)  # operation → calls in the round
    temporal_calls_by_api_per_batch: float = 0.0
    temporal_idle_calls_per_batch: float = (
        0.0  # long polls and worker heartbeats of every poller (time-bound)
    )
    temporal_persistence_per_batch: float = 0.0
    workflows_closed: int = 0  # as the Temporal server counted them during the round and its tail
    status_polls_per_batch: float = 0.0
    webhooks_received: int = 0
    machine_busy: float | None = None  # share of all cores busy during the round, whoever used them
    load_average: float | None = None  # the 1-minute load average at the round's end
    errors: tuple[str, ...] = ()
    # Why the round's counts and CPU may not be whole (settling gave up, workflows not seen closed).
    warnings: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return Round(self.path, self.wait, self.submitters).label

    @property
    def servers_cpu_s_per_batch(self) -> float:
        """API, worker(s), Parse, PostgreSQL and Temporal together (the client left out)."""
        return sum(v for part, v in self.cpu_s_per_batch.items() if part.startswith(SERVER_PARTS))


def attach_ratios(rows: Sequence[SaturationRow]) -> list[SaturationRow]:
    """Each path row gets its ratio to the direct row that ran last before it (rows in run order)."""
    out: list[SaturationRow] = []
    direct: float | None = None
    for row in rows:
        if row.path == DIRECT:
            direct = row.memories_per_s
            out.append(dataclasses.replace(row, vs_direct=1.0, direct_memories_per_s=direct))
        elif direct:
            out.append(
                dataclasses.replace(row, vs_direct=row.memories_per_s / direct, direct_memories_per_s=direct)
            )
        else:
            out.append(row)
    return out


# ---- what one round measures -------------------------------------------------------------------------
def settle_warnings(
    *, settled_before: bool, settled_after: bool, closed: int, workflows: int
) -> tuple[str, ...]:
    """What a round's row must say when its counts and CPU may not hold all of its work, or only its own."""
    warnings = []
    if not settled_before:
        warnings.append(
            f"the servers' counts were still moving {server_counts.SETTLE_MAX_S:g} s after the round before: "
            "this round's counts and CPU may hold some of its work"
        )
    if not settled_after:
        warnings.append(
            f"the servers' counts had not settled {server_counts.SETTLE_MAX_S:g} s after the round: "
            "its counts and CPU may miss its last work"
        )
    if closed < workflows:
        warnings.append(
            f"Temporal counted {closed} of the round's {workflows} workflows closed: the closing work of "
            "the others is missing from its counts and CPU"
        )
    return tuple(warnings)


@dataclass
class _Window:
    """CPU, machine load and the server counters over one span: from the round's start until the servers
    have counted every workflow of the round closed.

    A batch's closing work (its workflow's final task, the in-flight slot given back, PostgreSQL's
    writes) runs after the client saw the batch finish and belongs to its cost, in the CPU as in the
    counts. Both end at the same reading of the servers' counters (:func:`server_counts.read_settled`):
    the first with every workflow of the round counted closed and the work as it then stays. The quiet
    seconds that confirm it are not charged to the batches. The round's wall-clock time (its memories/s)
    stays the one the client saw.
    """

    watched: dict[str, int]
    http: httpx.AsyncClient
    settings: Settings
    previous: server_counts.ServerCounts | None = None  # the settled reading that closed the last window
    workflows: int = 0  # set by the round: workflows it started, each to be seen closed before the end
    cpu: dict[str, float] = field(default_factory=dict)
    busy: float | None = None
    counts: server_counts.ServerCounts = field(default_factory=server_counts.ServerCounts)
    warnings: tuple[str, ...] = ()

    def _sample(self) -> tuple[list[procstats.ProcSample], tuple[float, float] | None]:
        return procstats.sample(self.watched, alone=CLIENT_ALONE), procstats.machine_cpu_seconds()

    @asynccontextmanager
    async def measure(self) -> AsyncIterator[None]:
        before = await server_counts.read_settled(
            self.http, self.settings, mark=lambda: None, unless_equal_to=self.previous
        )
        cpu_before, machine_before = self._sample()
        yield
        after = await server_counts.read_settled(
            self.http,
            self.settings,
            mark=self._sample,
            closed_at_least=before.counts.temporal_workflows_closed + self.workflows,
        )
        cpu_after, machine_after = after.mark
        self.previous = after.counts
        self.counts = server_counts.delta(before.counts, after.counts)
        self.cpu = procstats.cpu_delta(cpu_before, cpu_after)
        self.warnings = settle_warnings(
            settled_before=before.settled,
            settled_after=after.settled,
            closed=self.counts.temporal_workflows_closed,
            workflows=self.workflows,
        )
        if machine_before and machine_after and machine_after[1] > machine_before[1]:
            # Rounded: both sides are sums of clock ticks turned into floats, and a fully busy machine
            # came out as 1.0000000000010163.
            busy = (machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1])
            self.busy = round(busy, 4)


def _row(
    round_: Round,
    window: _Window,
    *,
    batches: int,
    completed: int,
    memories: int,
    seconds: float,
    outcomes: Sequence[BatchOutcome] = (),
    webhooks: int = 0,
) -> SaturationRow:
    counts = window.counts
    per = 1 / batches if batches else 0.0
    api_spans: Counter[str] = sum((o.api_spans for o in outcomes), Counter())
    api_parse = sum(n for name, n in api_spans.items() if name.startswith("parse."))
    api_temporal = sum(n for name, n in api_spans.items() if name.startswith("temporal."))
    return SaturationRow(
        path=round_.kind,
        wait=round_.wait,
        submitters=round_.submitters,
        batches=batches,
        completed=completed,
        memories=memories,
        seconds=seconds,
        memories_per_s=memories / seconds if seconds > 0 else 0.0,
        cpu_s_per_batch={part: cpu * per for part, cpu in window.cpu.items()},
        parse_requests_per_batch=counts.parse_total * per,
        parse_requests=dict(sorted(counts.parse_requests.items())),
        parse_requests_by_api_per_batch=api_parse * per,
        api_spans=dict(sorted(api_spans.items())),
        parse_batch_subrequests=dict(sorted(counts.parse_batch_subrequests.items())),
        temporal_calls_per_batch=counts.temporal_work_calls * per,
        temporal_calls=dict(sorted(counts.temporal_calls.items())),
        temporal_calls_by_api_per_batch=api_temporal * per,
        temporal_idle_calls_per_batch=counts.temporal_idle_calls * per,
        temporal_persistence_per_batch=counts.temporal_persistence * per,
        workflows_closed=counts.temporal_workflows_closed,
        status_polls_per_batch=sum(o.polls for o in outcomes) * per,
        webhooks_received=webhooks,
        machine_busy=window.busy,
        load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        errors=tuple(dict.fromkeys(o.error for o in outcomes if o.error))[:5],
        warnings=window.warnings,
    )


# ---- completion webhooks ---------------------------------------------------------------------------------
class _Webhooks:
    """A real receiver in this process; completion webhooks handed from its thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.secret = secrets.token_urlsafe(24)
        self.receiver = WebhookReceiver(self.secret, on_request=self._on_request)
        self.received = 0
        self._loop = loop
        self._arrived: dict[str, dict[str, Any]] = {}
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def __enter__(self) -> _Webhooks:
        self.receiver.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.receiver.stop()

    def _on_request(self, request: ReceivedRequest) -> None:  # the receiver's thread
        try:
            body = json.loads(request.body)
        except ValueError:
            return
        if request.signature_valid and isinstance(body, dict) and isinstance(body.get("batch_id"), str):
            self._loop.call_soon_threadsafe(self._arrive, body)

    def _arrive(self, body: dict[str, Any]) -> None:
        self.received += 1
        waiter = self._waiting.pop(body["batch_id"], None)
        if waiter is not None and not waiter.done():
            waiter.set_result(body)
        else:
            self._arrived[body["batch_id"]] = body

    async def wait(self, batch_id: str, timeout_s: float) -> dict[str, Any]:
        if batch_id in self._arrived:  # it came before the submit's answer did
            return self._arrived.pop(batch_id)
        waiter = self._loop.create_future()
        self._waiting[batch_id] = waiter
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        finally:
            self._waiting.pop(batch_id, None)


# ---- the run -------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What every round of one run shares: the plan, the clients, the users, the variant's processes."""

    plan: SaturationPlan
    settings: Settings
    parse: ParseClient
    scrape: httpx.AsyncClient  # reads the servers' counters
    api: httpx.AsyncClient  # the variant's API
    users: dict[str, list[ParseUser]]  # path → users on it
    webhooks: _Webhooks
    watched: dict[str, int]  # process → pid, for CPU
    memories: list[dict[str, Any]]
    counts: server_counts.ServerCounts | None = None  # the last settled reading

    async def warm_up(self) -> None:
        """One batch per path, unmeasured: imports, connections and caches of a fresh API and worker."""
        for path in dict.fromkeys((*self.plan.paths, *self.plan.webhook_paths)):
            outcome = await self.one_batch(self.users[path][0], path, wait="poll")
            if outcome.status != "completed":
                raise SaturationError(
                    f"the warm-up batch on the {path} path ended {outcome.status}: {outcome.error}"
                )

    async def round(self, round_: Round) -> SaturationRow:
        window = _Window(self.watched, self.scrape, self.settings, previous=self.counts)
        row = await (self.direct(round_, window) if round_.kind == DIRECT else self.path(round_, window))
        self.counts = window.previous
        return row

    async def direct(self, round_: Round, window: _Window) -> SaturationRow:
        """The memories of ``round_.submitters`` submitters' batches, straight into Parse's /batch."""
        plan = self.plan
        batches = round_.submitters * plan.batches_per_submitter
        total = batches * plan.memories_per_batch
        writer = MemoryWriter(
            self.parse, batch_size=plan.direct_batch_size, concurrency=plan.direct_in_flight
        )
        owner = self.users[plan.paths[0]][0]
        context = WriteContext(batch_id=f"direct-{uuid.uuid4().hex}", user_id=owner.object_id)
        async with window.measure():
            started = time.perf_counter()
            # Validated inside the clock, as the API validates what it receives inside its own.
            items = [
                (i, MemoryItem.model_validate(self.memories[i % len(self.memories)])) for i in range(total)
            ]
            outcomes = await writer.write(context, items)
            seconds = time.perf_counter() - started
        # Outside the window, as `toolkit bench --writer` does: a direct round leaves no Memory behind.
        await delete_memories(self.parse, context.batch_id)
        written = sum(1 for o in outcomes if o.ok)
        return _row(
            round_,
            window,
            batches=batches,
            completed=written // plan.memories_per_batch,
            memories=written,
            seconds=seconds,
        )

    async def path(self, round_: Round, window: _Window) -> SaturationRow:
        """``round_.submitters`` users of the path, each submitting its batches back to back."""

        async def submitter(user: ParseUser) -> list[BatchOutcome]:
            return [
                await self.one_batch(user, round_.kind, wait=round_.wait)
                for _ in range(self.plan.batches_per_submitter)
            ]

        received_before = self.webhooks.received
        async with window.measure():
            started = time.perf_counter()
            # A submitter that raises (a batch put on the wrong path) cancels the others before the
            # error leaves the round: none keeps submitting into the next round or past the run's end.
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(submitter(u)) for u in self.users[round_.kind][: round_.submitters]
                    ]
            except ExceptionGroup as failed:
                raise failed.exceptions[0] from None
            seconds = time.perf_counter() - started
            outcomes = [o for task in tasks for o in task.result()]
            window.workflows = sum(1 for o in outcomes if o.batch_id is not None)
        return _row(
            round_,
            window,
            batches=len(outcomes),
            completed=sum(1 for o in outcomes if o.status == "completed"),
            memories=sum(o.successful for o in outcomes),
            seconds=seconds,
            outcomes=outcomes,
            webhooks=self.webhooks.received - received_before,
        )

    async def one_batch(self, user: ParseUser, path: str, *, wait: str) -> BatchOutcome:
        """Submit one batch as ``user`` and wait until it is final (polling, or for its webhook).

        A transport error (the API unreachable, a connection reset, a read timeout) ends this batch's
        wait with the error's type as its outcome; the round goes on with the other batches.
        """
        headers = {"X-Parse-Session-Token": user.session_token}
        body: dict[str, Any] = {"memories": self.memories}
        if wait == "webhook":
            body |= {"webhook_url": self.webhooks.receiver.url(), "webhook_secret": self.webhooks.secret}
        try:
            answer = await self.api.post("/v1/memory/batch", json=body, headers=headers)
        except httpx.HTTPError as exc:
            # The type only: the request it failed on holds the memories and the session token.
            return BatchOutcome(None, None, "error", 0, 0, error=f"submit failed: {type(exc).__name__}")
        spans = Counter(parse_counts(answer.headers.get(HEADER, "")))
        if answer.status_code != 202:
            error = f"submit answered {answer.status_code}"
            return BatchOutcome(None, None, "refused", 0, 0, spans, error)
        accepted = answer.json()
        if accepted["storage"] != path:
            raise SaturationError(
                f"a user of the {path} path was put on the {accepted['storage']} path: the rollout flags "
                "changed during the run"
            )
        batch_id, timeout_s = accepted["batch_id"], self.plan.batch_timeout_s
        polls = 0
        if wait == "webhook":
            try:
                final = await self.webhooks.wait(batch_id, timeout_s)
            except TimeoutError:
                final = {"status": "timeout", "successful": 0}
        else:
            deadline = time.monotonic() + timeout_s
            final = {"status": "timeout", "successful": 0}
            while time.monotonic() < deadline:
                await asyncio.sleep(self.plan.poll_interval_s)
                try:
                    status = await self.api.get(f"/v1/batch/{batch_id}/status", headers=headers)
                except httpx.HTTPError as exc:
                    error = f"status poll failed: {type(exc).__name__}"
                    return BatchOutcome(batch_id, path, "error", 0, polls, spans, error)
                polls += 1
                spans += Counter(parse_counts(status.headers.get(HEADER, "")))
                if status.status_code == 200 and status.json()["status"] in FINISHED_STATUSES:
                    final = status.json()
                    break
        error = f"not final after {timeout_s:g} s" if final["status"] == "timeout" else None
        return BatchOutcome(batch_id, path, final["status"], final["successful"], polls, spans, error)


@asynccontextmanager
async def _flags_for(parse: ParseClient, settings: Settings, percent: int) -> AsyncIterator[RolloutFlags]:
    """The rollout flags at ``percent`` for the run, put back as they were afterwards."""
    before = await read_flags(parse, settings)
    during = await write_flags(parse, settings, enabled=percent > 0, percent=percent)
    try:
        yield during
    finally:
        await write_flags(
            parse, settings, enabled=before.use_parse_batch_storage, percent=before.canary_percent
        )


async def _users_by_path(
    parse: ParseClient, flags: RolloutFlags, per_path: int
) -> dict[str, list[ParseUser]]:
    """Real users, at least ``per_path`` on each path the flags route to (by their canary bucket)."""
    pool = await prepare_users(parse, flags, count=per_path, min_per_path=per_path, max_signups=MAX_SIGNUPS)
    by_path: dict[str, list[ParseUser]] = {path: [] for path in PATHS}
    for user in pool:
        by_path[choose_storage(flags, user.object_id)].append(user)
    return by_path


async def measure_saturation(
    settings: Settings,
    plan: SaturationPlan,
    *,
    variant: Variant | None = None,
    echo: Callable[[str], None] | None = None,
    around_path_round: Callable[[Round, RunningVariant], AbstractAsyncContextManager[Any]] | None = None,
) -> list[SaturationRow]:
    """Run every round of ``plan`` in turn; return one row per round, ratios attached.

    The API and worker(s) are ``variant`` (default: this checkout's code, ``plan.workers`` workers),
    started once the rollout flags are set for the run (so they read them fresh), warmed up with one
    unmeasured batch per path, and stopped at the end. ``around_path_round`` wraps each path round
    (e.g. :func:`toolkit.validation.perf.profile.profiling` of the variant's pids).
    """
    check_batch_size(plan.memories_per_batch, settings)
    say = echo or (lambda line: None)
    spec = variant or Variant("saturation", workers=plan.workers)
    rows: list[SaturationRow] = []
    limits = httpx.Limits(max_connections=2 * MAX_SUBMITTERS + 8)
    async with ParseClient(settings) as parse, httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as scrape:
        await server_counts.read(scrape, settings)  # refuse early when a counter is missing
        async with _flags_for(parse, settings, plan.percent) as flags:
            say(f"... signing up users: {max(plan.concurrency)} per path at canary {flags.canary_percent}%")
            users = await _users_by_path(parse, flags, max(plan.concurrency))
            shared = procstats.stack_pids(settings.stack_dir)
            with _Webhooks(asyncio.get_running_loop()) as webhooks:
                async with (
                    running(settings, [spec]) as [started],
                    httpx.AsyncClient(base_url=started.api_url, timeout=HTTP_TIMEOUT_S, limits=limits) as api,
                ):
                    run = _Run(
                        plan,
                        settings,
                        parse,
                        scrape,
                        api,
                        users,
                        webhooks,
                        {
                            **{p: shared[p] for p in STACK_SERVERS if p in shared},
                            **started.pids,
                            "client": os.getpid(),
                        },
                        make_memories(plan.workload, plan.memories_per_batch),
                    )
                    say("... warming up: one batch per path")
                    await run.warm_up()
                    for round_ in plan.rounds():
                        profiled = around_path_round and round_.kind != DIRECT
                        async with around_path_round(round_, started) if profiled else nullcontext():
                            rows.append(await run.round(round_))
                        for line in [format_row(attach_ratios(rows)[-1]), *format_warnings(rows[-1])]:
                            say(line)
    return attach_ratios(rows)


# ---- printing ------------------------------------------------------------------------------------------
CPU_COLUMNS = ("api", "worker", "parse", "postgres", "temporal", "client")


def format_header() -> str:
    cpu = " ".join(f"{part:>8}" for part in CPU_COLUMNS)
    return (
        f"{'round':<22} {'batches':>7} {'ok':>4} {'mem/s':>7} {'÷direct':>7}  "
        f"CPU s/batch: {cpu} {'servers':>8}"
        f"  {'parse/b':>7} {'(api)':>6} {'tmprl/b':>7} {'(api)':>6} {'polls/b':>7} {'busy':>5}"
    )


def format_row(row: SaturationRow) -> str:
    cpu = row.cpu_s_per_batch
    workers = sum(v for part, v in cpu.items() if part.startswith("worker"))
    cells = [workers if part == "worker" else cpu.get(part, 0.0) for part in CPU_COLUMNS]
    ratio = f"{row.vs_direct:7.2f}" if row.vs_direct is not None else f"{'-':>7}"
    busy = f"{row.machine_busy:5.2f}" if row.machine_busy is not None else f"{'-':>5}"
    return (
        f"{row.label:<22} {row.batches:>7} {row.completed:>4} {row.memories_per_s:>7.0f} {ratio}  "
        f"{'':13}{' '.join(f'{v:8.3f}' for v in cells)} {row.servers_cpu_s_per_batch:8.3f}"
        f"  {row.parse_requests_per_batch:7.1f} {row.parse_requests_by_api_per_batch:6.1f}"
        f" {row.temporal_calls_per_batch:7.1f} {row.temporal_calls_by_api_per_batch:6.1f}"
        f" {row.status_polls_per_batch:7.1f} {busy}"
    )


def format_warnings(row: SaturationRow) -> list[str]:
    return [f"   {row.label}: WARNING: {warning}" for warning in row.warnings]


def format_counts(row: SaturationRow) -> list[str]:
    """The requests behind a row's per-batch figures, per batch, by route and by operation."""
    per = 1 / row.batches if row.batches else 0.0

    def listed(counts: Mapping[str, int]) -> str:
        return ", ".join(f"{name} {n * per:.2f}" for name, n in counts.items()) or "-"

    return [
        f"   {row.label}: Parse per batch: {listed(row.parse_requests)}",
        f"   {row.label}: inside /batch per batch: {listed(row.parse_batch_subrequests)}",
        f"   {row.label}: Temporal per batch: {listed(row.temporal_calls)}; "
        f"persistence ops {row.temporal_persistence_per_batch:.1f}",
    ]


def to_frame(rows: Sequence[SaturationRow]):  # -> pandas.DataFrame
    """One line per round; ``cpu.<process>`` columns per batch, ``servers_cpu_s_per_batch`` beside them."""
    import pandas as pd

    flat = []
    for row in rows:
        record = dataclasses.asdict(row)
        for part, value in record.pop("cpu_s_per_batch").items():
            record[f"cpu.{part}"] = value
        record["servers_cpu_s_per_batch"] = row.servers_cpu_s_per_batch
        record["label"] = row.label
        flat.append(record)
    return pd.DataFrame(flat)
