"""Deleting Temporal payloads kept in Parse Files (``toolkit payloads cleanup``), on the real servers."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import Client
from temporalio.converter import StorageDriverStoreContext

from tests.fixtures.stored_payloads import (
    LONG_AGO,
    RETRIEVE,
    for_workflow,
    payload_row,
    random_payload,
    start_size_workflow,
    stored_path,
)
from toolkit.cli import main
from toolkit.parse import ObjectNotFound, ParseClient
from toolkit.parse.cleanup import cleanup_finished_files
from toolkit.parse.models import to_parse_date
from toolkit.parse.schema import TEMPORAL_PAYLOAD
from toolkit.settings import Settings
from toolkit.temporal.external_storage import ParseFilesStorageDriver
from toolkit.temporal.payload_cleanup import cleanup_stored_payloads


async def test_cleanup_removes_only_what_no_retained_workflow_needs(
    driver: ParseFilesStorageDriver,
    storing_client: Client,
    temporal: Client,
    payload_worker: None,
    task_queue: str,
    parse: ParseClient,
    settings: Settings,
) -> None:
    closed = await start_size_workflow(temporal, b"done", task_queue)
    assert await closed.result() == 4
    # Nobody polls this queue: the workflow stays open.
    running = await start_size_workflow(temporal, b"open", f"nobody-{uuid.uuid4().hex}")
    never_started = f"never-{uuid.uuid4().hex}"

    async def stored(*workflow_ids: str, age: bool = True) -> tuple[str, str]:
        payload = random_payload(5_000)
        for workflow_id in workflow_ids or ("",):
            context = for_workflow(workflow_id) if workflow_id else StorageDriverStoreContext()
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
                await payload_row(parse, digest)
            assert not os.path.exists(stored_path(settings, name))
        for digest, name in (of_running, of_both, fresh):
            assert (await payload_row(parse, digest))["file"]["name"] == name
            assert os.path.exists(stored_path(settings, name))
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
    payload = random_payload(1_000)
    [claim] = await driver.store(StorageDriverStoreContext(), [payload])
    name = claim.claim_data["name"]
    os.utime(stored_path(settings, name), (LONG_AGO.timestamp(), LONG_AGO.timestamp()))
    since_2001 = (datetime.now(UTC) - datetime(2001, 1, 1, tzinfo=UTC)).days
    report = await cleanup_finished_files(parse, settings, older_than_days=since_2001, dry_run=True)
    assert name not in report.orphans_deleted
    assert await driver.retrieve(RETRIEVE, [claim]) == [payload]


def test_payloads_cleanup_command(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """``toolkit payloads cleanup``: an old payload of a never-run workflow goes; a dry run keeps it."""

    async def store_aged() -> tuple[str, str]:
        driver = ParseFilesStorageDriver(settings)
        [claim] = await driver.store(for_workflow(f"never-{uuid.uuid4().hex}"), [random_payload(2_000)])
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
                await payload_row(parse, digest)
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
    assert not os.path.exists(stored_path(settings, name))
    assert main(["payloads", "cleanup", "--min-age-hours", "-1"]) == 2
