"""collect_batches against the real stack: what Parse and Temporal hold, read back as one row per batch."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from temporalio.client import Client

from tests.fixtures.second_codec import document_bytes, gzip_size
from toolkit.parse import ParseClient
from toolkit.parse.models import MemoryItem
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.starter import store_and_start
from toolkit.validation.metrics import BATCH_COLUMNS, collect_batches
from toolkit.validation.workloads import chitchat_memories


def _uid() -> str:
    return uuid.uuid4().hex


async def test_both_paths_read_back_with_parse_and_temporal_figures(
    temporal: Client, parse: ParseClient, worker_settings: Settings, worker: None, user: ParseUser
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    submitted_at = datetime.now(UTC)
    memories = chitchat_memories(30)
    reference = await store_and_start(temporal, parse, worker_settings, user, memories)
    legacy = await store_and_start(temporal, parse, worker_settings, user, memories, legacy=True)
    in_chunks = dataclasses.replace(worker_settings, batch_chunk_memories=10)
    chunked = await store_and_start(temporal, parse, in_chunks, user, memories)
    assert (await reference.result()).successful == 30
    assert (await legacy.result()).successful == 30
    assert (await chunked.result()).successful == 30
    finished_at = datetime.now(UTC)

    frame = await collect_batches(worker_settings, since)
    assert list(frame.columns) == list(BATCH_COLUMNS)
    rows = frame.set_index("batch_id").loc[[reference.batch_id, legacy.batch_id]]
    ref, old = rows.loc[reference.batch_id], rows.loc[legacy.batch_id]
    # The chunk files each batch was stored as (the canary's history budget is per chunk).
    assert (ref.chunks, old.chunks) == (1, 1)
    assert frame.set_index("batch_id").loc[chunked.batch_id, "chunks"] == 3

    # As the store encodes them: validated first (which normalises the content), then gzipped. The
    # expected sizes come from a second implementation of the file format (zlib), not from the codec.
    plain = [MemoryItem.model_validate(m).model_dump(mode="json") for m in memories]
    raw = document_bytes(plain)
    compressed = gzip_size(raw, worker_settings.gzip_level)
    assert (ref.storage, old.storage) == ("reference", "legacy")
    assert (ref.status, ref.total, ref.successful, ref.failed, ref.error_count) == ("completed", 30, 30, 0, 0)
    assert (old.status, old.total, old.successful, old.failed) == ("completed", 30, 30, 0)
    assert (ref.request_id, ref.user_id) == (reference.request_id, user.object_id)
    assert (ref.raw_bytes, ref.compressed_bytes) == (len(raw), compressed)
    assert ref.compression_ratio == pytest.approx(len(raw) / compressed, abs=0.005)  # stored rounded
    # The legacy path stores nothing compressed: it records the raw JSON list its workflow input carries.
    legacy_raw = len(json.dumps(plain, separators=(",", ":"), ensure_ascii=False).encode())
    assert (old.raw_bytes, old.compressed_bytes, old.compression_ratio) == (legacy_raw, legacy_raw, 1.0)
    assert ref.workflow_id == f"batch-{reference.batch_id}"
    assert (ref.workflow_type, old.workflow_type) == (
        "ProcessBatchMemoryFromRequestWorkflow",
        "ProcessBatchMemoryWorkflow",
    )
    assert (ref.run_status, old.run_status) == ("COMPLETED", "COMPLETED")
    # The reference input is exactly the JSON of its two ids.
    expected_input = json.dumps(
        {"request_id": reference.request_id, "batch_id": reference.batch_id}, separators=(",", ":")
    )
    assert ref.input_bytes == len(expected_input)
    # Read from the server here, not through the toolkit's own measuring code: the events fetched one
    # by one, and the size the server reports.
    for row, handle in ((ref, reference.handle), (old, legacy.handle)):
        events = (await handle.fetch_history()).events
        info = (await handle.describe()).raw_description.workflow_execution_info
        assert (row.history_events, row.history_bytes) == (len(events), info.history_size_bytes)
        started = events[0].workflow_execution_started_event_attributes
        assert row.input_bytes == sum(len(payload.data) for payload in started.input.payloads)
    # Times: tz-aware UTC and in order. End to end spans the processing, and no more than this test
    # waited from before the submission to after both results.
    assert str(frame["created_at"].dt.tz) == "UTC"
    assert submitted_at - timedelta(seconds=1) <= ref.created_at <= ref.started_at <= ref.completed_at
    assert ref.processing_ms is not pd.NA and 0 <= ref.processing_ms <= ref.end_to_end_ms
    assert ref.end_to_end_ms <= (finished_at - submitted_at).total_seconds() * 1000 + 1_000


async def test_window_paging_and_requests_made_by_someone_else(
    parse: ParseClient, settings: Settings
) -> None:
    """Rows made by another tool, with most fields missing, page past 100 and respect [since, until)."""
    before = datetime.now(UTC) - timedelta(seconds=1)
    # 105 bare requests (more than one page), master-only ACL, no metadata, no workflow.
    ids = [f"foreign-{_uid()}" for _ in range(105)]
    for start in range(0, len(ids), 50):
        answers = await parse.batch(
            [
                {
                    "method": "POST",
                    "path": f"{parse.mount_path}/classes/{BATCH_MEMORY_REQUEST}",
                    "body": {"batchId": batch_id, "status": "pending", "ACL": {}},
                }
                for batch_id in ids[start : start + 50]
            ],
            master=True,
        )
        assert all("success" in a for a in answers), answers
    frame = await collect_batches(settings, before)
    mine = frame[frame["batch_id"].isin(ids)]
    assert sorted(mine["batch_id"]) == sorted(ids)
    assert mine["storage"].isna().all() and mine["workflow_type"].isna().all()
    assert mine["run_status"].isna().all() and mine["end_to_end_ms"].isna().all()
    assert (mine["status"] == "pending").all() and (mine["error_count"] == 0).all()

    # The window is half open: until == the first row's createdAt leaves the others out.
    first = mine["created_at"].min().to_pydatetime()
    assert (await collect_batches(settings, before, first, with_temporal=False))["batch_id"].isin(
        ids
    ).sum() == 0
    last = mine["created_at"].max().to_pydatetime()
    tail = await collect_batches(settings, last, with_temporal=False)
    assert set(tail["batch_id"]) & set(ids) == set(mine.loc[mine["created_at"] == last, "batch_id"])


async def test_an_empty_window_gives_the_columns_and_no_rows(settings: Settings) -> None:
    since = datetime(2001, 1, 1, tzinfo=UTC)
    frame = await collect_batches(settings, since, since + timedelta(minutes=1))
    assert frame.empty and list(frame.columns) == list(BATCH_COLUMNS)


async def test_until_before_since_is_refused(settings: Settings) -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="must be after"):
        await collect_batches(settings, now, now - timedelta(seconds=1))
