"""Payload-size metrics (``toolkit.temporal.payload_metrics``) on the real Temporal dev server, with workflows
that are not the toolkit's: exact histogram counts, sums and buckets for known payload sizes, nothing counted
on replay, and one warning per run."""

from __future__ import annotations

import logging
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client, WorkflowHistory
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Replayer, Worker

from tests.fixtures.echo_worker import bytes_payloads_size, int_payloads_size
from tests.fixtures.worker_process import wait_until
from toolkit.ports import free_port
from toolkit.settings import Settings
from toolkit.temporal.payload_metrics import (
    PAYLOAD_SIZE_METRIC,
    PayloadMetricsInterceptor,
    PayloadWarnings,
    bucket_overrides,
)
from toolkit.temporal.workflows import ProcessBatchMemoryFromRequestWorkflow, ProcessBatchMemoryWorkflow
from toolkit.testing.echo_workflows import (
    ECHO_ACTIVITIES,
    ECHO_ACTIVITY,
    ECHO_WORKFLOW,
    ECHO_WORKFLOWS,
    REFUSE_ACTIVITY,
    SIGNAL_WORKFLOW,
    PayloadEchoWorkflow,
    PayloadSignalWorkflow,
)

SIZES = (100, 3_000, 300_000)
NOTE = b"n" * 20_000


@dataclass(frozen=True)
class Metered:
    runtime: Runtime
    url: str


@pytest.fixture(scope="module")
def metered() -> Metered:
    """A runtime of its own that serves Prometheus with the byte buckets (the toolkit worker's setup)."""
    bind = f"127.0.0.1:{free_port()}"
    config = PrometheusConfig(bind_address=bind, histogram_bucket_overrides=bucket_overrides())
    return Metered(Runtime(telemetry=TelemetryConfig(metrics=config)), f"http://{bind}/metrics")


def scrape(url: str, task_queue: str) -> dict[tuple[str, str, str], dict[str, float]]:
    """The histogram's samples for one task queue: (workflow, activity, direction) → {count, sum, le=…}."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    series: dict[tuple[str, str, str], dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != PAYLOAD_SIZE_METRIC:
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("task_queue") != task_queue:
                continue
            key = (labels["workflow_type"], labels["activity_type"], labels["direction"])
            suffix = sample.name.removeprefix(PAYLOAD_SIZE_METRIC)
            name = f"le={labels['le']}" if suffix == "_bucket" else suffix.lstrip("_")
            series.setdefault(key, {})[name] = sample.value
    return series


async def recorded(url: str, task_queue: str, key: tuple[str, str, str]) -> None:
    """Wait until the exporter shows ``key`` (the last record of a run: what it returned)."""

    async def shown() -> bool:
        return "count" in scrape(url, task_queue).get(key, {})

    await wait_until(shown, 10, f"{key} on {url}")


async def _connect(settings: Settings, metered: Metered, **kwargs: object) -> Client:
    return await Client.connect(
        settings.temporal_target, namespace=settings.temporal_namespace, runtime=metered.runtime, **kwargs
    )


@pytest.fixture
async def installed_on_the_client(settings: Settings, metered: Metered) -> AsyncIterator[tuple[Client, str]]:
    # The one line: the interceptor on the client; every worker built on it measures.
    client = await _connect(settings, metered, interceptors=[PayloadMetricsInterceptor()])
    task_queue = f"metrics-{uuid.uuid4().hex[:10]}"
    async with Worker(client, task_queue=task_queue, workflows=ECHO_WORKFLOWS, activities=ECHO_ACTIVITIES):
        yield client, task_queue


async def test_known_payloads_give_exact_counts_sums_and_buckets(
    installed_on_the_client: tuple[Client, str], metered: Metered
) -> None:
    client, task_queue = installed_on_the_client
    for size in SIZES:
        data = b"x" * size
        assert (
            await client.execute_workflow(
                PayloadEchoWorkflow.run, data, id=f"echo-{uuid.uuid4().hex}", task_queue=task_queue
            )
            == size
        )
    handle = await client.start_workflow(
        PayloadSignalWorkflow.run, id=f"signal-{uuid.uuid4().hex}", task_queue=task_queue
    )
    await handle.signal(PayloadSignalWorkflow.note, NOTE)
    assert await handle.result() == len(NOTE)

    await recorded(metered.url, task_queue, (SIGNAL_WORKFLOW, "", "output"))
    series = scrape(metered.url, task_queue)

    echoed = sum(bytes_payloads_size(b"x" * size) for size in SIZES)
    assert {key: (values["count"], values["sum"]) for key, values in series.items()} == {
        (ECHO_WORKFLOW, "", "input"): (3, echoed),
        (ECHO_WORKFLOW, ECHO_ACTIVITY, "input"): (3, echoed),
        (ECHO_WORKFLOW, ECHO_ACTIVITY, "output"): (3, echoed),
        (ECHO_WORKFLOW, "", "output"): (3, sum(int_payloads_size(size) for size in SIZES)),
        (SIGNAL_WORKFLOW, "", "input"): (1, 0),  # no arguments: an empty payload set
        (SIGNAL_WORKFLOW, "", "signal"): (1, bytes_payloads_size(NOTE)),
        (SIGNAL_WORKFLOW, REFUSE_ACTIVITY, "input"): (1, bytes_payloads_size(NOTE)),
        # refuse_payload failed: no result, nothing observed as its output
        (SIGNAL_WORKFLOW, "", "output"): (1, int_payloads_size(len(NOTE))),
    }
    # 100 B, 3,000 B and 300,000 B (each with a ~30-byte envelope): the 256 B, 4 KiB and 512 KiB buckets.
    buckets = {
        name: value for name, value in series[(ECHO_WORKFLOW, "", "input")].items() if name.startswith("le=")
    }
    assert buckets == {
        "le=256": 1,
        "le=1024": 1,
        "le=4096": 2,
        "le=16384": 2,
        "le=65536": 2,
        "le=262144": 2,
        "le=524288": 3,
        "le=1048576": 3,
        "le=2097152": 3,
        "le=4194304": 3,
        "le=+Inf": 3,
    }


async def test_replays_count_nothing_and_each_run_warns_once(
    settings: Settings, metered: Metered, caplog: pytest.LogCaptureFixture
) -> None:
    # No workflow cache: every workflow task replays the run from its first event, so each payload is met
    # again on replay. Thresholds low enough that this run passes both (3,000-byte payloads; 9+ events).
    client = await _connect(settings, metered)
    task_queue = f"replay-{uuid.uuid4().hex[:10]}"
    warnings = PayloadWarnings(payload_warn_bytes=1_000, history_warn_events=8)
    workflow_id = f"echo-{uuid.uuid4().hex}"
    caplog.set_level(logging.WARNING, logger="temporalio.workflow")
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=ECHO_WORKFLOWS,
        activities=ECHO_ACTIVITIES,
        max_cached_workflows=0,
        interceptors=[PayloadMetricsInterceptor(warnings)],
    ):
        assert (
            await client.execute_workflow(
                PayloadEchoWorkflow.run, b"x" * 3_000, id=workflow_id, task_queue=task_queue
            )
            == 3_000
        )

    await recorded(metered.url, task_queue, (ECHO_WORKFLOW, "", "output"))
    counts = {key: values["count"] for key, values in scrape(metered.url, task_queue).items()}
    assert counts == {
        (ECHO_WORKFLOW, "", "input"): 1,
        (ECHO_WORKFLOW, ECHO_ACTIVITY, "input"): 1,
        (ECHO_WORKFLOW, ECHO_ACTIVITY, "output"): 1,
        (ECHO_WORKFLOW, "", "output"): 1,
    }
    messages = [r.getMessage() for r in caplog.records if workflow_id in r.getMessage()]
    kinds = Counter("payload" if m.startswith("payload of") else "history" for m in messages)
    assert kinds == {"payload": 1, "history": 1}, messages
    payload_warning = next(m for m in messages if m.startswith("payload of"))
    assert payload_warning.startswith(
        f"payload of {bytes_payloads_size(b'x' * 3_000):,} bytes (workflow input)"
    )
    assert "xxxx" not in "".join(messages)  # sizes and types only, never the content


async def test_the_recorded_toolkit_histories_replay_with_it_installed_and_warn_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Every history in tests/replay/histories, with thresholds every one of them passes: a replay runs the
    # interceptor over the toolkit's real payloads (pydantic models, the legacy batch) and must stay silent.
    histories = sorted((Path(__file__).resolve().parents[1] / "replay" / "histories").rglob("*.json"))
    replayer = Replayer(
        workflows=[ProcessBatchMemoryFromRequestWorkflow, ProcessBatchMemoryWorkflow],
        interceptors=[
            PayloadMetricsInterceptor(PayloadWarnings(payload_warn_bytes=1, history_warn_events=1))
        ],
    )
    caplog.set_level(logging.WARNING, logger="temporalio.workflow")
    failures = {}
    for path in histories:
        result = await replayer.replay_workflow(WorkflowHistory.from_json(path.stem, path.read_text()))
        if result.replay_failure is not None:
            failures[path.name] = result.replay_failure
    assert len(histories) >= 10 and failures == {}
    assert [r.getMessage() for r in caplog.records if "warning threshold" in r.getMessage()] == []
