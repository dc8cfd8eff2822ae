"""Record real workflow histories as replay fixtures: ``python -m tests.replay.record``.

Runs real batches on the stack named by the settings (``TOOLKIT_STACK_DIR`` / environment, as every
command) and saves each history as ``tests/replay/histories/<scenario>.json``, the format of
``WorkflowHistory.to_json()`` and ``temporal workflow show -o json``. ``tests/replay/test_replay.py``
replays every file against the current workflow code, so a change that would break runs in flight
fails CI. Record a new set at each release (README, "Replay fixtures").

Scenarios: both workflows, several sizes, a retried activity (a worker SIGKILLed mid-batch), a batch
that fails (its file is gone), and runs still in flight when recorded. Memory content is synthetic
(a fixed generator), the webhook secret is a throwaway, and every history is scrubbed of worker
identities (``pid@host``) and stack traces (paths of the recording machine) and then checked for the
stack's keys and the user's session token before it is written.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.models import MemoryItem
from toolkit.parse.users import ParseUser, sign_up
from toolkit.settings import Settings, load_settings
from toolkit.temporal.activities import BatchActivities
from toolkit.temporal.batch_types import BatchSummary
from toolkit.temporal.starter import SubmittedBatch, start_batch_workflow_with_reference, store_and_start
from toolkit.temporal.workflows import ProcessBatchMemoryFromRequestWorkflow, ProcessBatchMemoryWorkflow
from toolkit.validation.webhook_receiver import running_receiver
from toolkit.validation.workloads import synthetic_memories

HISTORIES_DIR = Path(__file__).resolve().parent / "histories"
# Identity written into the histories instead of the default ``pid@hostname``.
IDENTITY = "replay-recorder"
# A throwaway secret: it must never show up in a history (checked before writing).
WEBHOOK_SECRET = "whsec-replay-recorder"
# Small synthetic memories: legacy histories carry them verbatim, by design.
CONTENT_BYTES = 64


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    record: Callable[[Recorder], Awaitable[WorkflowHandle]]


class Recorder:
    """One recording session: a Temporal client, a Parse client, a user, and a webhook receiver URL."""

    def __init__(self, settings: Settings, temporal: Client, parse: ParseClient, user: ParseUser) -> None:
        self.settings = settings
        self.temporal = temporal
        self.parse = parse
        self.user = user
        self.webhook_url: str | None = None

    def queue_settings(self, **changes: Any) -> Settings:
        """Settings for a private task queue, so the stack's own worker never takes these runs."""
        return dataclasses.replace(
            self.settings,
            temporal_task_queue=f"replay-{uuid.uuid4().hex[:10]}",
            webhook_max_attempts=2,
            webhook_backoff_s=0.1,
            webhook_timeout_s=2.0,
            **changes,
        )

    @asynccontextmanager
    async def worker(self, settings: Settings):
        worker = Worker(
            self.temporal,
            task_queue=settings.temporal_task_queue,
            workflows=[ProcessBatchMemoryFromRequestWorkflow, ProcessBatchMemoryWorkflow],
            activities=BatchActivities(settings, self.parse).all(),
            identity=IDENTITY,
            max_heartbeat_throttle_interval=timedelta(seconds=1),
        )
        async with worker:
            yield

    async def submit(
        self,
        settings: Settings,
        memories: list[dict[str, Any]],
        *,
        legacy: bool = False,
        webhook: bool = True,
    ) -> SubmittedBatch:
        return await store_and_start(
            self.temporal,
            self.parse,
            settings,
            self.user,
            memories,
            legacy=legacy,
            webhook_url=self.webhook_url if webhook else None,
            webhook_secret=WEBHOOK_SECRET if webhook else None,
        )

    async def completed(
        self, count: int, *, legacy: bool = False, webhook: bool = True, chunk_memories: int | None = None
    ) -> WorkflowHandle:
        """A batch that completes; ``chunk_memories`` stores it as chunks of that many memories."""
        chunking = {"batch_chunk_memories": chunk_memories} if chunk_memories else {}
        settings = self.queue_settings(**chunking)
        async with self.worker(settings):
            batch = await self.submit(settings, _synthetic(count), legacy=legacy, webhook=webhook)
            summary = await asyncio.wait_for(batch.result(), timeout=300)
        print(f"  {batch.handle.id}: {summary.status} {summary.successful}/{summary.total}")
        return batch.handle

    async def rejected(self, count: int, *, legacy: bool) -> WorkflowHandle:
        """Every memory rejected by the writer (NUL is unstorable): the batch ends ``failed``."""
        settings = self.queue_settings()
        memories = [{"content": f"rejected \x00 {i}"} for i in range(count)]
        async with self.worker(settings):
            batch = await self.submit(settings, memories, legacy=legacy)
            summary = await asyncio.wait_for(batch.result(), timeout=300)
        assert summary.status == "failed", summary
        return batch.handle

    async def workflow_failure(self) -> WorkflowHandle:
        """The batch file is gone before the run starts: non-retryable, marked failed, workflow fails."""
        settings = self.queue_settings()
        memories = _synthetic(5)
        batch_id = uuid.uuid4().hex
        request_id = await store.create_batch_memory_request_in_parse(
            self.parse,
            settings,
            batch_id=batch_id,
            submission=store.Submission(
                self.user.object_id, webhook_url=self.webhook_url, webhook_secret=WEBHOOK_SECRET
            ),
            memories=[MemoryItem.model_validate(m) for m in memories],
            storage="reference",
        )
        await store.delete_batch_file(self.parse, request_id)
        async with self.worker(settings):
            workflow_id = await start_batch_workflow_with_reference(
                self.temporal, self.parse, settings, request_id=request_id, batch_id=batch_id
            )
            handle = self.temporal.get_workflow_handle(workflow_id, result_type=BatchSummary)
            try:
                await asyncio.wait_for(handle.result(), timeout=300)
            except Exception as exc:  # the failure is the point of this scenario
                print(f"  {workflow_id}: failed as intended ({type(exc).__name__})")
            else:
                raise AssertionError("the batch without a file did not fail")
        return handle

    async def in_flight(self, count: int, *, legacy: bool, until_events: int) -> WorkflowHandle:
        """A slow run recorded while still running (its worker stopped), then terminated."""
        settings = self.queue_settings(writer_batch_size=5, writer_concurrency=1)
        async with self.worker(settings):
            batch = await self.submit(settings, _synthetic(count), legacy=legacy)
            await _wait(lambda: _events_at_least(batch.handle, until_events), 120, "history to grow")
        # The worker is gone; the run stays open with activities pending. The caller fetches it first.
        return batch.handle

    async def retried(self, count: int) -> WorkflowHandle:
        """A worker process SIGKILLed mid-batch: the activity's next attempt (another worker) resumes it."""
        settings = self.queue_settings()
        with tempfile.TemporaryDirectory() as tmp:
            first = _worker_process(settings, Path(tmp) / "first")
            try:
                await _wait(lambda: _true((Path(tmp) / "first.ready").exists()), 90, "the first worker")
                batch = await self.submit(settings, _synthetic(count))
                await _wait(lambda: _checkpoint_at_least(batch.handle, 50), 120, "a checkpoint past 50")
            finally:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
            # The heartbeat timeout (20 s) passes before the server hands the activity to a new attempt.
            async with self.worker(settings):
                summary = await asyncio.wait_for(batch.result(), timeout=300)
        print(f"  {batch.handle.id}: {summary.status} {summary.successful}/{summary.total} after a kill")
        return batch.handle


def _synthetic(count: int) -> list[dict[str, Any]]:
    return synthetic_memories(count, content_bytes=CONTENT_BYTES)


def _worker_process(settings: Settings, stem: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "TOOLKIT_STACK_DIR": str(settings.stack_dir),
        "TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
        # Small serial chunks: slow enough to be killed in the middle.
        "WRITER_BATCH_SIZE": "5",
        "WRITER_CONCURRENCY": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "toolkit", "worker", "--ready-file", f"{stem}.ready"],
        env=env,
        stdout=open(f"{stem}.log", "wb"),  # noqa: SIM115 (closed with the temporary directory)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def _true(value: bool) -> bool:
    return value


async def _wait(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


async def _events_at_least(handle: WorkflowHandle, count: int) -> bool:
    return (await handle.describe()).raw_description.workflow_execution_info.history_length >= count


async def _checkpoint_at_least(handle: WorkflowHandle, index: int) -> bool:
    for pending in (await handle.describe()).raw_description.pending_activities:
        if pending.heartbeat_details.payloads:
            return json.loads(pending.heartbeat_details.payloads[0].data).get("next", -1) >= index
    return False


def scenarios() -> list[Scenario]:
    def in_flight(count: int, legacy: bool, events: int) -> Callable[[Recorder], Awaitable[WorkflowHandle]]:
        return lambda r: r.in_flight(count, legacy=legacy, until_events=events)

    return [
        Scenario("reference-1", "one memory, webhook", lambda r: r.completed(1)),
        Scenario(
            "reference-10-no-webhook", "10 memories, no webhook", lambda r: r.completed(10, webhook=False)
        ),
        Scenario("reference-250", "250 memories, webhook", lambda r: r.completed(250)),
        Scenario(
            "reference-rejected-4",
            "every memory rejected: status failed",
            lambda r: r.rejected(4, legacy=False),
        ),
        Scenario("reference-retried-300", "worker SIGKILLed mid-batch, retried", lambda r: r.retried(300)),
        Scenario(
            "reference-workflow-failed", "batch file gone: workflow fails", lambda r: r.workflow_failure()
        ),
        Scenario("reference-running", "recorded while processing", in_flight(2000, False, 5)),
        Scenario(
            "reference-chunked-300",
            "300 memories in 3 chunk files, webhook (finalize and webhook heartbeat: outage-retry-v1)",
            lambda r: r.completed(300, chunk_memories=100),
        ),
        Scenario(
            "reference-workflow-failed-v2",
            "batch file gone: workflow fails (marking it failed heartbeats: outage-retry-v1)",
            lambda r: r.workflow_failure(),
        ),
        Scenario("legacy-1", "one memory, webhook", lambda r: r.completed(1, legacy=True)),
        Scenario(
            "legacy-10-no-webhook",
            "10 memories, no webhook",
            lambda r: r.completed(10, legacy=True, webhook=False),
        ),
        Scenario(
            "legacy-45", "45 memories: more than the window of 20", lambda r: r.completed(45, legacy=True)
        ),
        Scenario(
            "legacy-rejected-4", "every memory rejected: status failed", lambda r: r.rejected(4, legacy=True)
        ),
        Scenario("legacy-running", "recorded mid fan-out", in_flight(60, True, 40)),
    ]


# ---- scrubbing and checking ---------------------------------------------------------------------

_SCRUBBED_KEYS = {"identity": IDENTITY, "stackTrace": ""}


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("kind") == "TASK_QUEUE_KIND_STICKY":
            # A worker's sticky queue is named after its process and host; replay never reads it.
            value = {**value, "name": f"{IDENTITY}-sticky"}
        return {k: _SCRUBBED_KEYS[k] if k in _SCRUBBED_KEYS else _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def scrubbed_history(raw_json: str) -> dict[str, Any]:
    """The history without machine details: worker identities and sticky queue names (process and
    host), and stack traces (absolute paths of the recording machine)."""
    return _scrub(json.loads(raw_json))


def leaked(text: str, secrets: list[str]) -> list[str]:
    return [s[:6] + "…" for s in secrets if s and s in text]


def _decoded(history: dict[str, Any]) -> Iterator[str]:
    import base64

    def walk(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            if "data" in value and isinstance(value["data"], str) and "metadata" in value:
                yield base64.b64decode(value["data"]).decode("utf-8", "replace")
            for v in value.values():
                yield from walk(v)
        elif isinstance(value, list):
            for v in value:
                yield from walk(v)

    yield from walk(history)


def history_text(history: dict[str, Any]) -> str:
    """The history's JSON plus every payload decoded: what a secret check must search."""
    return json.dumps(history) + "\n" + "\n".join(_decoded(history))


async def record(settings: Settings, names: list[str] | None, out: Path) -> list[Path]:
    chosen = [s for s in scenarios() if names is None or s.name in names]
    if names:
        unknown = set(names) - {s.name for s in scenarios()}
        if unknown:
            raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    out.mkdir(parents=True, exist_ok=True)
    temporal = await Client.connect(
        settings.temporal_target, namespace=settings.temporal_namespace, identity=IDENTITY
    )
    written = []
    async with ParseClient(settings) as parse:
        user = await sign_up(parse)
        secrets = [user.session_token, settings.parse_master_key, settings.parse_rest_api_key, WEBHOOK_SECRET]
        # The checkout's path, and the host as SDK identities name it (a bare short host name would
        # match random synthetic words).
        machine = [str(Path(__file__).resolve().parents[2]), f"@{os.uname().nodename}"]
        with running_receiver(WEBHOOK_SECRET) as receiver:
            recorder = Recorder(settings, temporal, parse, user)
            recorder.webhook_url = receiver.url()
            for scenario in chosen:
                print(f"{scenario.name}: {scenario.description}", flush=True)
                handle = await scenario.record(recorder)
                history = scrubbed_history((await handle.fetch_history()).to_json())
                text = history_text(history)
                found = leaked(text, secrets) + leaked(text, machine)
                if found:
                    raise SystemExit(
                        f"{scenario.name}: the history holds a secret or machine detail: {found}"
                    )
                path = out / f"{scenario.name}.json"
                path.write_text(json.dumps(history, indent=1) + "\n")
                written.append(path)
                description = await handle.describe()
                if description.status is not None and description.status.name == "RUNNING":
                    await handle.terminate("recorded as an in-flight replay fixture")
                print(f"  -> {path.name}: {len(history['events'])} events", flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.replay.record", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("scenarios", nargs="*", help="record only these (default: all)")
    parser.add_argument(
        "--out", type=Path, default=HISTORIES_DIR, help="where to write (default: %(default)s)"
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        for scenario in scenarios():
            print(f"{scenario.name:<28} {scenario.description}")
        return 0
    asyncio.run(record(load_settings(), args.scenarios or None, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
