"""Temporal external storage on Parse Files, against the real dev server, the real Parse Server and its files.

The worker in these tests runs on a client with the driver *off*: it proves the rule that every client
can read claims, and only the storing side needs the switch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowFailureError
from temporalio.converter import (
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
    StorageDriverWorkflowInfo,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from toolkit.cli import main
from toolkit.parse import ObjectNotFound, ParseClient
from toolkit.parse.cleanup import cleanup_finished_files, local_files_dir
from toolkit.parse.models import to_parse_date
from toolkit.parse.schema import TEMPORAL_PAYLOAD
from toolkit.settings import Settings, load_settings
from toolkit.temporal_client import connect
from toolkit.temporal_storage import (
    MalformedClaim,
    ParseFilesStorageDriver,
    PayloadIntegrityError,
    PayloadMissing,
    cleanup_stored_payloads,
    external_storage,
    file_name_for,
    measure_legacy_with_driver,
)
from toolkit.testing.payload_workflow import PAYLOAD_SIZE_WORKFLOW, PayloadSizeWorkflow

FIVE_MB = 5 * 1024 * 1024
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
RETRIEVE = StorageDriverRetrieveContext()


@pytest.fixture(scope="module")
async def storing_client(settings: Settings) -> Client:
    """A client with the driver on (default threshold, 256 KiB)."""
    return await connect(dataclasses.replace(settings, temporal_external_storage=True))


@pytest.fixture
def task_queue() -> str:
    return f"payload-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def payload_worker(temporal: Client, task_queue: str) -> AsyncIterator[None]:
    """A worker whose client has the driver off (``temporal`` is built from the plain settings)."""
    async with Worker(temporal, task_queue=task_queue, workflows=[PayloadSizeWorkflow]):
        yield


@pytest.fixture
def driver(settings: Settings) -> ParseFilesStorageDriver:
    return ParseFilesStorageDriver(settings)


def _random_payload(size: int) -> Payload:
    return Payload(metadata={"encoding": b"binary/plain"}, data=os.urandom(size))


def _for_workflow(workflow_id: str) -> StorageDriverStoreContext:
    return StorageDriverStoreContext(target=StorageDriverWorkflowInfo(namespace="default", id=workflow_id))


def _stored_path(settings: Settings, name: str) -> os.PathLike[str]:
    directory = local_files_dir(settings)
    assert directory is not None, "the local stack's files directory must exist"
    return directory / name


async def _row(parse: ParseClient, digest: str) -> dict:
    return await parse.get_object(TEMPORAL_PAYLOAD, digest, master=True)


async def _start_size_workflow(client: Client, data: bytes, task_queue: str):
    return await client.start_workflow(
        PAYLOAD_SIZE_WORKFLOW,
        data,
        id=f"payload-{uuid.uuid4().hex}",
        task_queue=task_queue,
        result_type=int,
        execution_timeout=timedelta(minutes=2),
    )


def test_settings_switch_and_threshold() -> None:
    settings = load_settings(
        {"TEMPORAL_EXTERNAL_STORAGE": "1", "TEMPORAL_EXTERNAL_STORAGE_THRESHOLD": "1024"}
    )
    assert settings.temporal_external_storage is True
    assert settings.temporal_external_storage_threshold == 1024
    assert load_settings({}).temporal_external_storage is False
    with pytest.raises(ValueError, match="TEMPORAL_EXTERNAL_STORAGE_THRESHOLD must be >= 0"):
        external_storage(load_settings({"TEMPORAL_EXTERNAL_STORAGE_THRESHOLD": "-1"}))


async def test_five_mb_input_completes_and_history_holds_only_the_claim(
    storing_client: Client, payload_worker: None, task_queue: str, parse: ParseClient
) -> None:
    data = os.urandom(FIVE_MB)
    handle = await _start_size_workflow(storing_client, data, task_queue)
    assert await handle.result() == FIVE_MB

    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    [claim_payload] = started.input.payloads
    # The claim records how big the payload it stands for is: binary/plain metadata + 5 MiB of data.
    payload_size = Payload(metadata={"encoding": b"binary/plain"}, data=data).ByteSize()
    assert [p.size_bytes for p in claim_payload.external_payloads] == [payload_size]
    assert claim_payload.metadata["encoding"] == b"json/protobuf"
    serialized = b"".join(event.SerializeToString() for event in history.events)
    assert data[:64] not in serialized and data[-64:] not in serialized
    info = (await handle.describe()).raw_description.workflow_execution_info
    assert info.history_size_bytes < 3_000, info.history_size_bytes
    # Started, one workflow task (scheduled, started, completed), completed.
    assert info.history_length == 5
    assert (info.external_payload_count, info.external_payload_size_bytes) == (1, payload_size)
    digest = hashlib.sha256(
        Payload(metadata={"encoding": b"binary/plain"}, data=data).SerializeToString(deterministic=True)
    ).hexdigest()
    row = await _row(parse, digest)
    assert row["workflowIds"] == [handle.id]
    assert row["payloadBytes"] == payload_size


async def test_without_the_driver_the_same_start_fails_with_the_server_limit(
    temporal: Client, task_queue: str
) -> None:
    workflow_id = f"payload-{uuid.uuid4().hex}"
    with pytest.raises(RPCError) as raised:
        await temporal.start_workflow(
            PAYLOAD_SIZE_WORKFLOW, os.urandom(FIVE_MB), id=workflow_id, task_queue=task_queue
        )
    assert "larger than max" in str(raised.value) or "exceeds limit" in str(raised.value), raised.value
    with pytest.raises(RPCError) as missing:
        await temporal.get_workflow_handle(workflow_id).describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND


async def test_identical_payloads_are_stored_once(
    driver: ParseFilesStorageDriver, settings: Settings, parse: ParseClient
) -> None:
    payload = _random_payload(300_000)
    first, second = f"wf-{uuid.uuid4().hex}", f"wf-{uuid.uuid4().hex}"
    [claim_1] = await driver.store(_for_workflow(first), [payload])
    [claim_2] = await driver.store(_for_workflow(second), [payload])
    assert claim_1 == claim_2
    digest = claim_1.claim_data["digest"]
    row = await _row(parse, digest)
    assert sorted(row["workflowIds"]) == sorted([first, second])
    assert row["file"]["name"] == claim_1.claim_data["name"]

    # A new payload stored by four processes at once: still one row and one file.
    racing = _random_payload(300_000)
    claims = await asyncio.gather(*(driver.store(_for_workflow(first), [racing]) for _ in range(4)))
    assert len({c[0].claim_data["name"] for c in claims}) == 1
    racing_digest = claims[0][0].claim_data["digest"]
    directory = local_files_dir(settings)
    assert directory is not None
    assert [p.name for p in directory.iterdir() if p.name.endswith(file_name_for(racing_digest))] == [
        claims[0][0].claim_data["name"]
    ]
    assert await parse.count(TEMPORAL_PAYLOAD, {"digest": racing_digest}, master=True) == 1
    [back] = await driver.retrieve(RETRIEVE, claims[0])
    assert back == racing


async def test_tampered_missing_and_malformed_claims_fail_clearly(
    driver: ParseFilesStorageDriver, settings: Settings, parse: ParseClient
) -> None:
    payload = _random_payload(10_000)
    [claim] = await driver.store(StorageDriverStoreContext(), [payload])
    digest, name = claim.claim_data["digest"], claim.claim_data["name"]
    assert [await driver.retrieve(RETRIEVE, [claim])] == [[payload]]

    path = _stored_path(settings, name)
    with open(path, "wb") as tampered:
        tampered.write(gzip.compress(_random_payload(10_000).SerializeToString()))
    with pytest.raises(PayloadIntegrityError) as mismatch:
        await driver.retrieve(RETRIEVE, [claim])
    assert mismatch.value.non_retryable
    assert f"stored payload {digest}" in str(mismatch.value) and "fails verification" in str(mismatch.value)

    with open(path, "wb") as corrupt:
        corrupt.write(b"not gzip at all")
    with pytest.raises(PayloadIntegrityError, match="not a valid gzip file"):
        await driver.retrieve(RETRIEVE, [claim])

    await parse.delete_file(name)
    with pytest.raises(PayloadMissing, match=f"stored payload {digest} .* is gone"):
        await driver.retrieve(RETRIEVE, [claim])

    for bad in ({"digest": "xyz", "name": name}, {"digest": digest, "name": "../../etc/passwd"}, {}):
        with pytest.raises(MalformedClaim):
            await driver.retrieve(RETRIEVE, [StorageDriverClaim(claim_data=bad)])
    await parse.delete_object(TEMPORAL_PAYLOAD, digest, master=True)


async def test_a_tampered_workflow_input_fails_the_workflow_at_once(
    storing_client: Client, temporal: Client, task_queue: str, settings: Settings
) -> None:
    data = os.urandom(400_000)
    handle = await _start_size_workflow(storing_client, data, task_queue)
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    claim_name = started.input.payloads[0].data.split(b'"name":"')[1].split(b'"')[0].decode()
    with open(_stored_path(settings, claim_name), "wb") as tampered:
        tampered.write(gzip.compress(_random_payload(400_000).SerializeToString()))

    async with Worker(temporal, task_queue=task_queue, workflows=[PayloadSizeWorkflow]):
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "PayloadIntegrityError"
    assert cause.non_retryable
    assert "fails verification" in cause.message


async def test_cleanup_removes_only_what_no_retained_workflow_needs(
    driver: ParseFilesStorageDriver,
    storing_client: Client,
    temporal: Client,
    payload_worker: None,
    task_queue: str,
    parse: ParseClient,
    settings: Settings,
) -> None:
    closed = await _start_size_workflow(temporal, b"done", task_queue)
    assert await closed.result() == 4
    # Nobody polls this queue: the workflow stays open.
    running = await _start_size_workflow(temporal, b"open", f"nobody-{uuid.uuid4().hex}")
    never_started = f"never-{uuid.uuid4().hex}"

    async def stored(*workflow_ids: str, age: bool = True) -> tuple[str, str]:
        payload = _random_payload(5_000)
        for workflow_id in workflow_ids or ("",):
            context = _for_workflow(workflow_id) if workflow_id else StorageDriverStoreContext()
            [claim] = await driver.store(context, [payload])
        digest = claim.claim_data["digest"]
        if age:  # as if last stored in 2000: only these rows match the cutoff below
            await parse.update_object(
                TEMPORAL_PAYLOAD, digest, {"lastUsedAt": to_parse_date(LONG_AGO)}, master=True
            )
        return digest, claim.claim_data["name"]

    of_closed = await stored(closed.id)
    of_running = await stored(running.id)
    of_both = await stored(closed.id, running.id)
    of_nobody = await stored(never_started)
    of_no_workflow = await stored()
    fresh = await stored(closed.id, age=False)
    # Rows older than this are candidates: only the ones dated back to 2000 above.
    since_2001 = datetime.now(UTC) - datetime(2001, 1, 1, tzinfo=UTC)
    # Rows a crashed earlier run left behind may match too: judge only this test's own rows.
    mine = {of_closed[0], of_running[0], of_both[0], of_nobody[0], of_no_workflow[0], fresh[0]}
    try:
        dry = await cleanup_stored_payloads(
            temporal, parse, retention=timedelta(0), min_age=since_2001, dry_run=True
        )
        gone = {of_closed[0], of_nobody[0], of_no_workflow[0]}
        assert set(dry.deleted) & mine == gone
        assert set(dry.kept_in_use) & mine == {of_running[0], of_both[0]}
        assert dry.errors == []
        # Retention of a day: the workflow that closed a moment ago still holds its payload.
        retained = await cleanup_stored_payloads(
            temporal, parse, retention=timedelta(days=1), min_age=since_2001, dry_run=True
        )
        assert set(retained.deleted) & mine == {of_nobody[0], of_no_workflow[0]}

        report = await cleanup_stored_payloads(temporal, parse, retention=timedelta(0), min_age=since_2001)
        assert set(report.deleted) & mine == gone
        for digest, name in (of_closed, of_nobody, of_no_workflow):
            with pytest.raises(ObjectNotFound):
                await _row(parse, digest)
            assert not os.path.exists(_stored_path(settings, name))
        for digest, name in (of_running, of_both, fresh):
            assert (await _row(parse, digest))["file"]["name"] == name
            assert os.path.exists(_stored_path(settings, name))
        # Default min age (an hour) and the namespace's own retention: nothing just stored goes.
        default = await cleanup_stored_payloads(temporal, parse)
        assert fresh[0] not in default.deleted
    finally:
        await running.terminate("test over")
        for digest, name in (of_running, of_both, fresh):
            await parse.delete_object(TEMPORAL_PAYLOAD, digest, master=True)
            await parse.delete_file(name)


async def test_batch_cleanup_never_takes_driver_files_for_orphans(
    driver: ParseFilesStorageDriver, settings: Settings, parse: ParseClient
) -> None:
    payload = _random_payload(1_000)
    [claim] = await driver.store(StorageDriverStoreContext(), [payload])
    name = claim.claim_data["name"]
    os.utime(_stored_path(settings, name), (LONG_AGO.timestamp(), LONG_AGO.timestamp()))
    since_2001 = (datetime.now(UTC) - datetime(2001, 1, 1, tzinfo=UTC)).days
    report = await cleanup_finished_files(parse, settings, older_than_days=since_2001, dry_run=True)
    assert name not in report.orphans_deleted
    assert await driver.retrieve(RETRIEVE, [claim]) == [payload]


def test_payloads_cleanup_command(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """``toolkit payloads cleanup``: an old payload of a never-run workflow goes; a dry run keeps it."""

    async def store_aged() -> tuple[str, str]:
        driver = ParseFilesStorageDriver(settings)
        [claim] = await driver.store(_for_workflow(f"never-{uuid.uuid4().hex}"), [_random_payload(2_000)])
        digest = claim.claim_data["digest"]
        async with ParseClient(settings) as parse:
            await parse.update_object(
                TEMPORAL_PAYLOAD, digest, {"lastUsedAt": to_parse_date(LONG_AGO)}, master=True
            )
        await driver.aclose()
        return digest, claim.claim_data["name"]

    async def row_exists(digest: str) -> bool:
        async with ParseClient(settings) as parse:
            try:
                await _row(parse, digest)
            except ObjectNotFound:
                return False
            return True

    digest, name = asyncio.run(store_aged())
    hours_since_2001 = str((datetime.now(UTC) - datetime(2001, 1, 1, tzinfo=UTC)).total_seconds() / 3600)
    argv = ["payloads", "cleanup", "--retention-hours", "0", "--min-age-hours", hours_since_2001]
    assert main([*argv, "--dry-run"]) == 0
    assert "would delete" in (out := capsys.readouterr().out) and f"  {digest}\n" in out
    assert asyncio.run(row_exists(digest))
    assert main(argv) == 0
    assert f"  {digest}\n" in capsys.readouterr().out
    assert not asyncio.run(row_exists(digest))
    assert not os.path.exists(_stored_path(settings, name))
    assert main(["payloads", "cleanup", "--min-age-hours", "-1"]) == 2


async def test_legacy_batch_with_the_driver_keeps_its_input_outside_the_history(
    worker: None, worker_settings: Settings, parse: ParseClient
) -> None:
    """The payload notebook's third column: the legacy path through a client with the driver on."""
    figures = await measure_legacy_with_driver(worker_settings, 10, threshold=1024)
    assert figures.status == "completed"
    assert (figures.memories, figures.threshold, figures.workload) == (10, 1024, "chitchat")
    # The input in the history is the claim alone: driver name, digest and the file's name.
    digest_0 = "0" * 64
    name_0 = f"{'0' * 32}_{file_name_for(digest_0)}"  # Parse's random prefix, 32 hex digits
    claim = json.dumps(
        {"driverName": "parse-files", "claimData": {"digest": digest_0, "name": name_0}},
        separators=(",", ":"),
    )
    assert figures.input_bytes == len(claim)
    temporal = await connect(worker_settings)
    history = await temporal.get_workflow_handle(figures.workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    digest = started.input.payloads[0].data.split(b'"digest":"')[1][:64].decode()
    assert (await _row(parse, digest))["payloadBytes"] == figures.externally_stored_bytes > 1024


async def test_a_driver_measurement_that_times_out_terminates_its_legacy_run(
    temporal: Client, settings: Settings
) -> None:
    """Nothing polls this queue: the measurement gives up, and no legacy workflow is left running."""
    unpolled = dataclasses.replace(settings, temporal_task_queue=f"unpolled-{uuid.uuid4().hex[:10]}")
    with pytest.raises(TimeoutError):
        await measure_legacy_with_driver(unpolled, 20, threshold=1024, timeout=timedelta(seconds=1))
    query = f'TaskQueue="{unpolled.temporal_task_queue}"'
    for _ in range(50):  # visibility may trail the start by a moment
        runs = [run async for run in temporal.list_workflows(query)]
        if runs:
            break
        await asyncio.sleep(0.1)
    assert len(runs) == 1
    description = await temporal.get_workflow_handle(runs[0].id).describe()
    assert description.status is not None and description.status.name == "TERMINATED"
