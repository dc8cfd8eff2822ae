"""Temporal external storage on Parse Files, against the real dev server, the real Parse Server and its files.

The worker in these tests runs on a client with the driver *off*: it proves the rule that every client
can read claims, and only the storing side needs the switch.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import re
import uuid

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowFailureError
from temporalio.converter import (
    StorageDriverClaim,
    StorageDriverStoreContext,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from tests.fixtures.stored_payloads import (
    RETRIEVE,
    for_workflow,
    payload_row,
    random_payload,
    start_size_workflow,
    stored_path,
)
from toolkit.parse import ParseClient
from toolkit.parse.cleanup import local_files_dir
from toolkit.parse.schema import TEMPORAL_PAYLOAD
from toolkit.settings import Settings, load_settings
from toolkit.temporal.external_storage import (
    MalformedClaim,
    ParseFilesStorageDriver,
    PayloadIntegrityError,
    PayloadMissing,
    external_storage,
    file_name_for,
)
from toolkit.testing.payload_workflow import PAYLOAD_SIZE_WORKFLOW, PayloadSizeWorkflow

FIVE_MB = 5 * 1024 * 1024


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
    handle = await start_size_workflow(storing_client, data, task_queue)
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
    row = await payload_row(parse, digest)
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
    # Past 4 MiB the gRPC message limit answers before the 2 MiB payload limit is checked (field notes).
    assert re.fullmatch(r"grpc: received message larger than max \(\d+ vs\. 4194304\)", str(raised.value))
    with pytest.raises(RPCError) as missing:
        await temporal.get_workflow_handle(workflow_id).describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND


async def test_identical_payloads_are_stored_once(
    driver: ParseFilesStorageDriver, settings: Settings, parse: ParseClient
) -> None:
    payload = random_payload(300_000)
    first, second = f"wf-{uuid.uuid4().hex}", f"wf-{uuid.uuid4().hex}"
    [claim_1] = await driver.store(for_workflow(first), [payload])
    [claim_2] = await driver.store(for_workflow(second), [payload])
    assert claim_1 == claim_2
    digest = claim_1.claim_data["digest"]
    row = await payload_row(parse, digest)
    assert sorted(row["workflowIds"]) == sorted([first, second])
    assert row["file"]["name"] == claim_1.claim_data["name"]

    # A new payload stored by four processes at once: still one row and one file.
    racing = random_payload(300_000)
    claims = await asyncio.gather(*(driver.store(for_workflow(first), [racing]) for _ in range(4)))
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
    payload = random_payload(10_000)
    [claim] = await driver.store(StorageDriverStoreContext(), [payload])
    digest, name = claim.claim_data["digest"], claim.claim_data["name"]
    assert [await driver.retrieve(RETRIEVE, [claim])] == [[payload]]

    path = stored_path(settings, name)
    with open(path, "wb") as tampered:
        tampered.write(gzip.compress(random_payload(10_000).SerializeToString()))
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
    handle = await start_size_workflow(storing_client, data, task_queue)
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    claim_name = started.input.payloads[0].data.split(b'"name":"')[1].split(b'"')[0].decode()
    with open(stored_path(settings, claim_name), "wb") as tampered:
        tampered.write(gzip.compress(random_payload(400_000).SerializeToString()))

    async with Worker(temporal, task_queue=task_queue, workflows=[PayloadSizeWorkflow]):
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "PayloadIntegrityError"
    assert cause.non_retryable
    assert "fails verification" in cause.message
