"""Helpers and fixtures of the fault suite (conftest.py registers the fixtures).

The fault suite's own stack: a second, complete stack (own directory, free ports), killed in parts.

Nothing here touches the test stack the rest of the suite uses, so killing PostgreSQL or Temporal
disturbs no other test. Parts are the stack's real processes, found by their pid files in
``<stack dir>/pids/`` and started again with the stack's own code. The webhook receiver is a process
too (``receiver.py``), so it can be killed and started again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from toolkit import stack
from toolkit.parse import ParseClient
from toolkit.parse.memory_writer import MEMORY_CLASS
from toolkit.parse.models import FINISHED_STATUSES
from toolkit.parse.users import ParseUser, sign_up
from toolkit.settings import REPO_ROOT, Settings, load_settings
from toolkit.stack._process import StackPart, pid_alive, read_pid
from toolkit.stack.manager import parts
from toolkit.temporal.client import connect
from toolkit.testing.ports import free_port

WEBHOOK_SECRET = "whsec-fault-suite"
# Each trial's batches must all be final within this long after the fault is over.
SETTLE_TIMEOUT_S = 300.0
SEED = int(os.environ.get("FAULT_SEED", str(random.SystemRandom().randrange(1 << 30))))
# The soak variant repeats the random worker kills this many times (README, "Fault suite").
SOAK_TRIALS = int(os.environ.get("FAULT_SOAK_TRIALS", "0"))
# The soak's long outage: Parse down this long in the middle of a chunked batch of this many memories
# (more than the ~8 minutes a chunk activity's retries used to last).
LONG_OUTAGE_S = float(os.environ.get("FAULT_LONG_OUTAGE_S", "660"))
LONG_OUTAGE_MEMORIES = int(os.environ.get("FAULT_LONG_OUTAGE_MEMORIES", "12000"))

# What the stack's own processes get on top of the stack's settings: small writer chunks so a batch
# is still running when a part is killed, and webhook retries that outlast a receiver outage.
PROCESS_ENV = {
    "WRITER_BATCH_SIZE": "10",
    "WRITER_CONCURRENCY": "2",
    "WEBHOOK_MAX_ATTEMPTS": "10",
    "WEBHOOK_BACKOFF_S": "1",
    "WEBHOOK_TIMEOUT_S": "5",
    "USE_PARSE_BATCH_STORAGE": "1",
    # Half the users go the reference way, half the legacy way (stable buckets): both paths are hit.
    "PARSE_BATCH_CANARY_PERCENT": "50",
}


def log(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", flush=True)


class FaultStack:
    """The fault suite's stack, with kill and start by part name."""

    def __init__(self, settings: Settings, environ: dict[str, str]) -> None:
        self.settings = settings
        self.environ = environ

    @contextlib.contextmanager
    def process_env(self) -> Iterator[None]:
        """Parts spawned inside inherit the fault stack's variables, not the outer test stack's."""
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.environ)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def part(self, name: str) -> StackPart:
        return {p.name: p for p in parts(self.settings)}[name]

    def pid(self, name: str) -> int | None:
        return read_pid(self.part(name).pid_file)

    def kill(self, name: str) -> int:
        """SIGKILL the part and every process under it; return the pid killed."""
        pid = self.pid(name)
        assert pid is not None, f"{name} is not running"
        victims = [pid, *_descendants(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        # Gone means reaped, not only dead: PostgreSQL refuses to start while the pid in its lock file
        # still exists, and a zombie does. Our own children are reaped here, the others by init.
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{v}").exists() for v in victims) and time.monotonic() < deadline:
            for victim in victims:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(victim, os.WNOHANG)
            time.sleep(0.05)
        assert not any(pid_alive(v) for v in victims), f"{name} survived SIGKILL"
        log(f"killed {name} (pid {pid}, {len(victims) - 1} child process(es))")
        return pid

    def start(self, name: str) -> None:
        started = time.monotonic()
        with self.process_env():
            self.part(name).start()
        log(f"started {name} (pid {self.pid(name)}) in {time.monotonic() - started:.1f}s")

    async def start_async(self, name: str) -> None:
        await asyncio.to_thread(self.start, name)

    def alive(self) -> dict[str, bool]:
        return {p.name: p.pid() is not None for p in parts(self.settings)}


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _fault_environ(stack_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    # Every settings variable of the outer environment is dropped: the fault stack names its own.
    setting_names = {f.name.upper() for f in fields(Settings)} | {"TOOLKIT_STACK_DIR"}
    base = {k: v for k, v in os.environ.items() if k not in setting_names}
    return {
        **base,
        "TOOLKIT_STACK_DIR": str(stack_dir),
        **{name: str(port) for name, port in ports.items()},
        **PROCESS_ENV,
        "PYTHONUNBUFFERED": "1",
    }


# Not under pytest's temporary folder: every pytest session resets that folder's root to mode 0700,
# and PostgreSQL runs as an unprivileged user that must traverse the path (a concurrent pytest run
# broke initdb there). One folder per run, removed at the end.
FAULT_STACKS_DIR = REPO_ROOT / ".stack-faults"


@pytest.fixture(scope="session")
def fault_stack() -> Iterator[FaultStack]:
    stack_dir = FAULT_STACKS_DIR / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    stack_dir.mkdir(parents=True)
    ports = {
        name: free_port()
        for name in ("POSTGRES_PORT", "PARSE_PORT", "TEMPORAL_PORT", "TEMPORAL_UI_PORT", "API_PORT")
    }
    environ = _fault_environ(stack_dir, ports)
    log(f"seed {SEED} (FAULT_SEED={SEED} repeats this run); stack in {stack_dir}, ports {ports}")
    faults = FaultStack(load_settings(environ), environ)
    started = time.monotonic()
    try:
        with faults.process_env():
            faults.settings = stack.up(faults.settings, echo=lambda line: log(line))
        faults.settings = load_settings(environ)
        log(f"fault stack up in {time.monotonic() - started:.0f}s")
        yield faults
    finally:
        stack.down(faults.settings, echo=lambda line: log(line), grace_s=5)
        shutil.rmtree(stack_dir, ignore_errors=True)


# ---- the webhook receiver -----------------------------------------------------------------------


class Receiver:
    """The receiver process: killed and started again on the same port, one log across its lives."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.log_file = directory / "webhooks.jsonl"
        self.log_file.touch()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        argv = [sys.executable, str(Path(__file__).with_name("receiver.py"))]
        argv += ["--port", str(self.port), "--log", str(self.log_file), "--secret", WEBHOOK_SECRET]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"receiver did not start: {line}"
        log(f"webhook receiver up (pid {self.proc.pid})")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        log(f"webhook receiver killed (pid {self.proc.pid})")

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_file.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    current = Receiver(tmp_path_factory.mktemp("receiver"))
    current.start()
    try:
        yield current
    finally:
        if current.proc is not None and current.proc.poll() is None:
            current.kill()


# ---- clients, users and batches --------------------------------------------------------------------


@pytest.fixture(scope="session")
async def fault_parse(fault_stack: FaultStack) -> AsyncIterator[ParseClient]:
    async with ParseClient(fault_stack.settings) as client:
        yield client


@pytest.fixture(scope="session")
async def fault_temporal(fault_stack: FaultStack) -> Client:
    return await connect(fault_stack.settings)


@dataclass(frozen=True)
class Users:
    reference: ParseUser  # in the canary: its batches take the reference path
    legacy: ParseUser


@pytest.fixture(scope="session")
async def users(fault_parse: ParseClient) -> Users:
    from toolkit.rollout import canary_bucket

    percent = int(PROCESS_ENV["PARSE_BATCH_CANARY_PERCENT"])
    found: dict[bool, ParseUser] = {}
    while len(found) < 2:
        user = await sign_up(fault_parse)
        found.setdefault(canary_bucket(user.object_id) < percent, user)
    return Users(reference=found[True], legacy=found[False])


@dataclass
class Batch:
    batch_id: str
    workflow_id: str
    storage: str
    total: int
    user: ParseUser
    trial: str


@dataclass
class Api:
    """The fault stack's API over HTTP, as a client sees it."""

    settings: Settings
    receiver: Receiver
    submitted: list[Batch] = field(default_factory=list)

    async def submit(self, user: ParseUser, count: int, trial: str, *, expect: str) -> Batch:
        memories = [
            {"content": f"{trial} memory {i}: " + "x" * 40, "metadata": {"trial": trial, "i": i}}
            for i in range(count)
        ]
        body = {"memories": memories, "webhook_url": self.receiver.url, "webhook_secret": WEBHOOK_SECRET}
        async with httpx.AsyncClient(base_url=self.settings.api_url, timeout=60) as http:
            response = await http.post(
                "/v1/memory/batch", json=body, headers={"X-Parse-Session-Token": user.session_token}
            )
        assert response.status_code == 202, response.text
        answer = response.json()
        assert answer["storage"] == expect, answer
        batch = Batch(answer["batch_id"], answer["workflow_id"], answer["storage"], count, user, trial)
        self.submitted.append(batch)
        return batch

    async def status(self, batch: Batch) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.settings.api_url, timeout=30) as http:
            response = await http.get(
                f"/v1/batch/{batch.batch_id}/status",
                headers={"X-Parse-Session-Token": batch.user.session_token},
            )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="session")
def api(fault_stack: FaultStack, receiver: Receiver) -> Api:
    return Api(fault_stack.settings, receiver)


@dataclass(frozen=True)
class Trial:
    """What a fault trial works with: the stack, its API and users, clients and the webhook receiver."""

    stack: FaultStack
    api: Api
    users: Users
    parse: ParseClient
    temporal: Client
    receiver: Receiver

    async def settle_and_check(self, batches: list[Batch]) -> None:
        await settle_and_check(
            batches,
            api=self.api,
            parse=self.parse,
            temporal=self.temporal,
            receiver=self.receiver,
            stack=self.stack,
        )


@pytest.fixture(scope="session")
def trial(
    fault_stack: FaultStack,
    api: Api,
    users: Users,
    fault_parse: ParseClient,
    fault_temporal: Client,
    receiver: Receiver,
) -> Trial:
    return Trial(fault_stack, api, users, fault_parse, fault_temporal, receiver)


# ---- what every trial must leave behind ------------------------------------------------------------


async def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if await predicate():
                return
        except (httpx.HTTPError, OSError, RuntimeError, AssertionError):
            pass  # a part may still be coming back
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


async def memories_written(parse: ParseClient, batch: Batch) -> int:
    return await parse.count(MEMORY_CLASS, {"batchId": batch.batch_id}, master=True)


async def retried_activities(temporal: Client, batch: Batch) -> list[tuple[str, int]]:
    """The batch's activities that took more than one attempt: (type, attempt). An outage spends none."""
    events = (await temporal.get_workflow_handle(batch.workflow_id).fetch_history()).events
    types = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.HasField("activity_task_scheduled_event_attributes")
    }
    started = [
        e.activity_task_started_event_attributes
        for e in events
        if e.HasField("activity_task_started_event_attributes")
    ]
    return [(types[a.scheduled_event_id], a.attempt) for a in started if a.attempt > 1]


async def settle_and_check(
    batches: list[Batch],
    *,
    api: Api,
    parse: ParseClient,
    temporal: Client,
    receiver: Receiver,
    stack: FaultStack,
) -> None:
    """Every batch final and exact: its workflow completed, ``completed`` with all counters adding up,
    exactly its memories (each index once), its webhook recorded once; and no orphan batch file."""
    started = time.monotonic()
    for batch in batches:
        handle = temporal.get_workflow_handle(batch.workflow_id)

        async def closed(handle=handle) -> bool:
            return (await handle.describe()).status != WorkflowExecutionStatus.RUNNING

        await wait_until(closed, SETTLE_TIMEOUT_S, f"workflow {batch.workflow_id} to close")
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED, batch

    for batch in batches:
        status = await api.status(batch)
        assert status["status"] in FINISHED_STATUSES
        assert (status["status"], status["storage"]) == ("completed", batch.storage), status
        assert status["total_memories"] == status["processed"] == batch.total, status
        assert (status["successful"], status["failed"], status["error_count"]) == (batch.total, 0, 0), status
        assert status["webhook_sent"] is True, status
        rows = await parse.find(
            MEMORY_CLASS, {"batchId": batch.batch_id}, keys="index", limit=batch.total + 100, master=True
        )
        indexes = sorted(row["index"] for row in rows)
        assert indexes == list(range(batch.total)), f"{batch.batch_id}: memories lost or duplicated"

    records = receiver.records()
    for batch in batches:
        mine = [r for r in records if json.loads(r["body"]).get("batch_id") == batch.batch_id]
        assert mine, f"{batch.batch_id}: no webhook received"
        assert all(r["signature_valid"] for r in mine)
        # A retried delivery repeats the same delivery (same id, same body); receivers drop repeats.
        deliveries = {r["headers"].get("x-batch-delivery-id") or r["body"] for r in mine}
        assert len(deliveries) == 1, f"{batch.batch_id}: {len(deliveries)} distinct deliveries"
        body = json.loads(mine[0]["body"])
        assert (body["status"], body["total"], body["successful"], body["failed"]) == (
            "completed",
            batch.total,
            batch.total,
            0,
        )
    await assert_no_orphan_files(parse, stack.settings)
    memories = sum(b.total for b in batches)
    log(f"{len(batches)} batch(es), {memories} memories checked in {time.monotonic() - started:.0f}s")


async def assert_no_orphan_files(parse: ParseClient, settings: Settings) -> None:
    directory = settings.stack_dir / "parse" / "files" / "batches"
    on_disk = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    referenced: set[str] = set()
    skip = 0
    while True:
        rows = await parse.find(
            "BatchMemoryRequest",
            {"$or": [{"batchDataFile": {"$exists": True}}, {"batchChunkFiles": {"$exists": True}}]},
            keys="batchDataFile,batchChunkFiles",
            limit=1000,
            skip=skip,
            order="objectId",
            master=True,
        )
        referenced.update(row["batchDataFile"]["name"] for row in rows if row.get("batchDataFile"))
        referenced.update(file["name"] for row in rows for file in row.get("batchChunkFiles") or [])
        if len(rows) < 1000:
            break
        skip += len(rows)
    orphans = on_disk - referenced
    assert not orphans, f"orphan batch files: {sorted(orphans)[:5]}"
