"""``toolkit cleanup`` against the real Parse Server and its files directory.

The stack is shared with other tests running now, so every real deletion here uses a cutoff in the year
2001: only objects and files this test dated back to 2000 can match it. Runs with ``older_than_days=0``
(every finished request) are dry runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from tests.fixtures.long_ago import LONG_AGO, days_since_2001
from toolkit.cli.cleanup import cleanup_command
from toolkit.parse import ObjectNotFound, ParseClient, in_flight
from toolkit.parse import batch_requests as store
from toolkit.parse.cleanup import cleanup_finished_files, local_files_dir
from toolkit.parse.models import BatchMemoryRequest, ParseFile, to_parse_date
from toolkit.parse.schema import BATCH_SLOT_HOLD
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.validation.workloads import synthetic_memories

CreateBatch = Callable[..., Awaitable[str]]


async def _request(parse: ParseClient, settings: Settings, request_id: str) -> BatchMemoryRequest:
    request = await store.fetch_batch_memory_request_from_parse(
        parse, settings, request_id, with_memories=False
    )
    assert request is not None
    return request


async def _file(parse: ParseClient, settings: Settings, request_id: str) -> ParseFile:
    file = (await _request(parse, settings, request_id)).batch_data_file
    assert file is not None and file.url
    return file


def _age(settings: Settings, name: str) -> None:
    """Date a stored file back to 2000, as if it had been uploaded long ago."""
    directory = local_files_dir(settings)
    assert directory is not None, "the local stack's files directory must exist"
    path = directory / name
    assert path.is_file()
    os.utime(path, (LONG_AGO.timestamp(), LONG_AGO.timestamp()))


async def _finish(parse: ParseClient, request_id: str, status: str, completed_at: datetime) -> None:
    await store.update_batch_request_completion(
        parse,
        request_id,
        status=status,
        completed_at=completed_at,
        processing_duration_ms=10,  # type: ignore[arg-type]
    )


async def test_files_of_old_finished_requests_go_unfinished_ones_stay(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    finished = {status: await create_batch() for status in ("completed", "partial", "failed")}
    for status, request_id in finished.items():
        await _finish(parse, request_id, status, LONG_AGO)
    recent = await create_batch()
    await _finish(parse, recent, "completed", datetime.now(UTC))
    pending = await create_batch()
    processing = await create_batch()
    await store.update_batch_request_status(parse, processing, "processing", extra={"completedAt": LONG_AGO})
    # An unfinished request is never touched, even with an old completedAt (e.g. a rerun in progress).
    await parse.update_object(
        "BatchMemoryRequest",
        pending,
        {"completedAt": {"__type": "Date", "iso": "2000-01-01T00:00:00.000Z"}},
        master=True,
    )
    files = {
        rid: await _file(parse, settings, rid) for rid in [*finished.values(), recent, pending, processing]
    }
    old_finished_names = {files[rid].name for rid in finished.values()}

    dry = await cleanup_finished_files(parse, settings, older_than_days=days_since_2001(), dry_run=True)
    assert old_finished_names <= set(dry.files_deleted)
    for file in files.values():  # a dry run deletes nothing
        assert await parse.download(file.url or "")

    report = await cleanup_finished_files(parse, settings, older_than_days=days_since_2001())
    assert old_finished_names <= set(report.files_deleted)
    assert report.errors == []
    for rid in finished.values():
        with pytest.raises(ObjectNotFound):
            await parse.download(files[rid].url or "")
        request = await _request(parse, settings, rid)
        assert request.batch_data_file is None  # the reference is gone, the request stays
        assert request.status in ("completed", "partial", "failed")
    for rid in (recent, pending, processing):
        assert files[rid].name not in report.files_deleted
        assert await parse.download(files[rid].url or "")
        assert (await _request(parse, settings, rid)).batch_data_file is not None

    # Zero days means every finished request, and still never an unfinished one (dry run: shared stack).
    everything = await cleanup_finished_files(parse, settings, older_than_days=0, dry_run=True)
    assert files[recent].name in everything.files_deleted
    assert files[pending].name not in everything.files_deleted
    assert files[processing].name not in everything.files_deleted


async def test_old_orphan_files_go_referenced_and_recent_ones_stay(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch, unique: str
) -> None:
    orphan = await parse.upload_file(
        f"orphan{unique}.json.gz", b"\x1f\x8b lost", "application/gzip", master=True
    )
    recent_orphan = await parse.upload_file(
        f"fresh{unique}.json.gz", b"\x1f\x8b new", "application/gzip", master=True
    )
    referenced_id = await create_batch()
    referenced = await _file(parse, settings, referenced_id)
    _age(settings, orphan["name"])
    _age(settings, referenced.name)

    dry = await cleanup_finished_files(parse, settings, older_than_days=days_since_2001(), dry_run=True)
    assert orphan["name"] in dry.orphans_deleted
    assert await parse.download(orphan["url"])

    report = await cleanup_finished_files(parse, settings, older_than_days=days_since_2001())
    assert report.files_dir == local_files_dir(settings)
    assert orphan["name"] in report.orphans_deleted
    assert referenced.name not in report.orphans_deleted
    assert recent_orphan["name"] not in report.orphans_deleted
    assert report.referenced_files_kept >= 1 and report.recent_files_kept >= 1
    with pytest.raises(ObjectNotFound):
        await parse.download(orphan["url"])
    assert await parse.download(referenced.url or "")
    assert await parse.download(recent_orphan["url"])
    assert await store.fetch_batch_memory_request_from_parse(parse, settings, referenced_id) is not None
    await store.delete_file_if_present(parse, ParseFile(name=recent_orphan["name"]))


async def test_the_chunk_files_of_a_dead_upload_go_once_its_hold_is_stale(
    parse: ParseClient, settings: Settings, user: ParseUser, unique: str
) -> None:
    """An upload whose process died stops touching its hold: its chunk files are orphans again."""
    batch_id = f"deadupload{unique}"
    hold = await in_flight.take_slot(parse, user.object_id, 1, batch_id=batch_id)
    writer = store.ChunkedBatchWriter(parse, dataclasses.replace(settings, batch_chunk_memories=2), batch_id)
    for memory in synthetic_memories(5, content_bytes=20):
        await writer.add(memory)
    names = [chunk.file.name for chunk in await writer.finish()]
    assert [store.batch_id_of_file(name) for name in names] == [batch_id] * 3
    for name in names:
        _age(settings, name)

    alive = await cleanup_finished_files(parse, settings, older_than_days=days_since_2001())
    assert not set(names) & set(alive.orphans_deleted) and alive.uploading_files_kept >= 3

    long_ago = datetime.now(UTC) - timedelta(seconds=in_flight.HOLD_STALE_AFTER_S + 1)
    await parse.update_object(
        BATCH_SLOT_HOLD, hold.token, {"touchedAt": to_parse_date(long_ago)}, master=True
    )
    dead = await cleanup_finished_files(parse, settings, older_than_days=days_since_2001())
    assert set(names) <= set(dead.orphans_deleted)
    await in_flight.release(parse, hold.token)


async def test_a_negative_age_is_refused(parse: ParseClient, settings: Settings) -> None:
    with pytest.raises(ValueError):
        await cleanup_finished_files(parse, settings, older_than_days=-1)


def test_cleanup_command_prints_what_it_would_do(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(older_than=0.0, dry_run=True)
    assert cleanup_command(args, settings) == 0
    out = capsys.readouterr().out
    assert "files of all finished requests:" in out
    assert "would delete" in out
    assert "orphan files in " in out
