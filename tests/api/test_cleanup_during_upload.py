"""``toolkit cleanup`` leaves the chunk files of an upload in progress alone (issue 16).

A chunked batch's files are referenced by no request until the last byte of its body arrives, and an
upload has only an idle timeout, so its first chunk files can be older than any orphan age while it
runs. Cleanup used to delete them as orphans, and the batch then lost those chunks. Now an upload in
progress keeps its in-flight slot's hold touched, and cleanup keeps the files of such a batch.

Real API process, real worker, real Parse; the upload is paused half way while cleanup runs.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx

from tests.fixtures.uploads import files_of, paused_body
from tests.fixtures.worker_process import wait_until
from toolkit.api.idempotency import idempotent_batch_id
from toolkit.parse import ParseClient
from toolkit.parse.cleanup import cleanup_finished_files, local_files_dir
from toolkit.parse.memory_writer import count_memories
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer, FlagSetter

CHUNK = 10
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


async def test_cleanup_keeps_the_chunk_files_of_an_upload_in_progress(
    start_api: Callable[..., ApiServer],
    worker_settings: Settings,
    worker: None,
    set_flags: FlagSetter,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    unique: str,
) -> None:
    await set_flags(enabled=True, percent=100)  # chunked uploads are the reference path's
    api = start_api(
        TEMPORAL_TASK_QUEUE=worker_settings.temporal_task_queue,
        BATCH_CHUNK_MEMORIES=str(CHUNK),
        BODY_IDLE_TIMEOUT_S="300",  # the paused upload must not time out on a loaded machine
    )
    key = f"cleanup-{unique}"
    batch_id = idempotent_batch_id(user.object_id, key)
    total, paused_at = 5 * CHUNK, 3 * CHUNK + 5
    sent, go_on = asyncio.Event(), asyncio.Event()
    headers = {
        "Content-Type": "application/json",
        "X-Parse-Session-Token": user.session_token,
        "Idempotency-Key": key,
    }
    async with httpx.AsyncClient(timeout=120.0) as http:
        post = asyncio.create_task(
            http.post(
                f"{api.url}/v1/memory/batch",
                content=paused_body(total, paused_at, sent, go_on),
                headers=headers,
            )
        )
        await sent.wait()

        async def three_chunks_stored() -> bool:
            return len(files_of(settings, batch_id)) == 3

        await wait_until(three_chunks_stored, 60, "the first three chunk files")
        before = sorted(files_of(settings, batch_id))

        # The upload's chunk files dated back to 2000: orphans by age, if they were orphans. The cutoff
        # (2001) leaves every other test's files alone.
        directory = local_files_dir(settings)
        assert directory is not None
        for name in before:
            os.utime(directory / name, (LONG_AGO.timestamp(), LONG_AGO.timestamp()))
        days = (datetime.now(UTC) - datetime(2001, 1, 1, tzinfo=UTC)).days
        report = await cleanup_finished_files(parse, settings, older_than_days=days)

        assert sorted(files_of(settings, batch_id)) == before
        assert not set(before) & set(report.orphans_deleted)
        assert report.uploading_files_kept >= len(before)
        go_on.set()
        answer = await post
        assert answer.status_code == 202, answer.text

        async def finished() -> bool:
            status = await http.get(f"{api.url}/v1/batch/{batch_id}/status", headers=headers)
            return status.json()["status"] in ("completed", "partial", "failed")

        await wait_until(finished, 120, f"batch {batch_id}")
        status = (await http.get(f"{api.url}/v1/batch/{batch_id}/status", headers=headers)).json()
    assert (status["status"], status["successful"], status["failed"]) == ("completed", total, 0)
    assert await count_memories(parse, batch_id) == total
