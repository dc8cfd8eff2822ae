"""``toolkit cleanup``: delete batch files that are no longer needed.

Two kinds of files go:

1. **Files of finished requests** (status in :data:`FINISHED_STATUSES`, ``completedAt`` older than the
   cutoff; ``older_than_days=0`` means every finished request). The file is deleted and
   ``batchDataFile`` unset; the request itself, its counters and errors stay. Unfinished requests are
   never selected: their worker still needs the file.
2. **Orphan files**: uploaded, but referenced by no request (e.g. the API died between the upload and
   the create). Parse has no API to list files, so orphans are found only where the files adapter's
   directory is visible: the local stack's ``<stack_dir>/parse/files/batches`` (Parse runs with cwd
   ``.stack/parse`` and ``filesSubDirectory: batches``). With S3 or another adapter, use the bucket's
   own lifecycle rules instead. An orphan is deleted (through Parse's REST API, master key) only if its
   mtime is older than the cutoff *and* than :data:`ORPHAN_MIN_AGE_S`, so an upload whose create is
   still in flight is never taken for an orphan; and never while its batch's upload is in progress. A
   chunked batch's files are referenced only once its last byte arrived, and an upload has no time
   limit (only an idle timeout), so its first chunk files can be hours old while it runs: an upload
   in progress keeps its in-flight slot's hold touched (:mod:`toolkit.parse.in_flight`), and the files
   of a batch whose hold was touched within ``HOLD_STALE_AFTER_S`` are kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from toolkit.parse import in_flight
from toolkit.parse._client import ParseClient
from toolkit.parse.batch_requests import batch_id_of_file, delete_file_if_present
from toolkit.parse.errors import ParseError
from toolkit.parse.models import FINISHED_STATUSES, ParseFile, to_parse_date
from toolkit.parse.schema import BATCH_MEMORY_REQUEST, TEMPORAL_PAYLOAD
from toolkit.settings import Settings

__all__ = [
    "ORPHAN_MIN_AGE_S",
    "CleanupReport",
    "cleanup_finished_files",
    "local_files_dir",
]

log = logging.getLogger(__name__)

# An upload and its create are a few milliseconds apart; an hour is far beyond any such race.
ORPHAN_MIN_AGE_S = 3600.0
_PAGE = 100


@dataclass
class CleanupReport:
    """What a cleanup run deleted (or, with ``dry_run``, would delete)."""

    older_than_days: float
    dry_run: bool
    # Files of finished requests.
    finished_requests_matched: int = 0
    files_deleted: list[str] = field(default_factory=list)
    # Orphans: None when no local files directory could be scanned.
    files_dir: Path | None = None
    orphans_deleted: list[str] = field(default_factory=list)
    referenced_files_kept: int = 0
    recent_files_kept: int = 0
    uploading_files_kept: int = 0
    errors: list[str] = field(default_factory=list)


def local_files_dir(settings: Settings) -> Path | None:
    """The local fs files adapter's directory, if this machine runs the stack's Parse Server."""
    directory = settings.stack_dir / "parse" / "files" / "batches"
    return directory if directory.is_dir() else None


async def _pages(
    client: ParseClient, where: dict[str, Any], keys: str
) -> AsyncIterator[list[dict[str, Any]]]:
    """All matching objects, page by page, keyed on objectId so deletions while paging skip nothing."""
    last: str | None = None
    while True:
        page_where = {**where, "objectId": {"$gt": last}} if last else where
        rows = await client.find(
            BATCH_MEMORY_REQUEST, page_where, limit=_PAGE, order="objectId", keys=keys, master=True
        )
        if not rows:
            return
        yield rows
        if len(rows) < _PAGE:
            return
        last = rows[-1]["objectId"]


async def _clean_finished(client: ParseClient, report: CleanupReport, cutoff: datetime | None) -> None:
    where: dict[str, Any] = {"status": {"$in": list(FINISHED_STATUSES)}, "batchDataFile": {"$exists": True}}
    if cutoff is not None:
        where["completedAt"] = {"$lt": to_parse_date(cutoff)}
    async for rows in _pages(client, where, keys="batchDataFile,status,completedAt"):
        for row in rows:
            report.finished_requests_matched += 1
            file = ParseFile.model_validate(row["batchDataFile"])
            if report.dry_run:
                report.files_deleted.append(file.name)
                continue
            try:
                # File first, then the reference (as delete_batch_file does): a rerun finishes the job.
                await delete_file_if_present(client, file)
                await client.update_object(
                    BATCH_MEMORY_REQUEST, row["objectId"], {"batchDataFile": {"__op": "Delete"}}, master=True
                )
            except ParseError as exc:
                report.errors.append(f"request {row['objectId']}: file {file.name}: {exc}")
                continue
            report.files_deleted.append(file.name)
    # Chunked batches (issue 10): every chunk file of a finished request, then the reference.
    chunked = {key: value for key, value in where.items() if key != "batchDataFile"}
    chunked["batchChunkFiles"] = {"$exists": True}
    async for rows in _pages(client, chunked, keys="batchChunkFiles,status,completedAt"):
        for row in rows:
            report.finished_requests_matched += 1
            files = [ParseFile.model_validate(file) for file in row.get("batchChunkFiles") or []]
            if not report.dry_run:
                try:
                    for file in files:
                        await delete_file_if_present(client, file)
                    await client.update_object(
                        BATCH_MEMORY_REQUEST,
                        row["objectId"],
                        {"batchChunkFiles": {"__op": "Delete"}},
                        master=True,
                    )
                except ParseError as exc:
                    report.errors.append(f"request {row['objectId']}: chunk files: {exc}")
                    continue
            report.files_deleted.extend(file.name for file in files)


async def _referenced_names(client: ParseClient) -> set[str]:
    # File equality and $in on File fields are unsupported on Postgres ($in silently matches nothing),
    # so the referenced names are read in full: one small page per 100 requests that hold a file.
    names: set[str] = set()
    async for rows in _pages(client, {"batchDataFile": {"$exists": True}}, keys="batchDataFile"):
        names.update(row["batchDataFile"]["name"] for row in rows if row.get("batchDataFile"))
    # A chunked batch (issue 10) references its chunk files from batchChunkFiles instead.
    async for rows in _pages(client, {"batchChunkFiles": {"$exists": True}}, keys="batchChunkFiles"):
        names.update(file["name"] for row in rows for file in row.get("batchChunkFiles") or [])
    # Payloads kept by the Temporal storage driver share the files directory; their own cleanup
    # (`toolkit payloads cleanup`) decides when they go.
    skip = 0
    while True:
        rows = await client.find(
            TEMPORAL_PAYLOAD, limit=_PAGE, skip=skip, order="objectId", keys="file", master=True
        )
        names.update(row["file"]["name"] for row in rows if row.get("file"))
        skip += len(rows)
        if len(rows) < _PAGE:
            return names


async def _clean_orphans(
    client: ParseClient, report: CleanupReport, directory: Path, cutoff_ts: float
) -> None:
    candidates: list[str] = []
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        if path.stat().st_mtime >= cutoff_ts:
            report.recent_files_kept += 1
        else:
            candidates.append(path.name)
    if not candidates:
        return
    # Read after listing: a file created and attached in between counts as referenced, and an upload
    # that started in between has touched its hold.
    referenced = await _referenced_names(client)
    uploading = await in_flight.live_upload_batch_ids(client)
    for name in candidates:
        if name in referenced:
            report.referenced_files_kept += 1
            continue
        if batch_id_of_file(name) in uploading:
            report.uploading_files_kept += 1
            continue
        if not report.dry_run:
            try:
                await delete_file_if_present(client, ParseFile(name=name))
            except ParseError as exc:
                report.errors.append(f"orphan {name}: {exc}")
                continue
        report.orphans_deleted.append(name)


async def cleanup_finished_files(
    client: ParseClient,
    settings: Settings,
    *,
    older_than_days: float,
    dry_run: bool = False,
    orphan_min_age_s: float = ORPHAN_MIN_AGE_S,
) -> CleanupReport:
    """Delete the files of requests finished more than ``older_than_days`` ago, and old orphan files."""
    if older_than_days < 0:
        raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
    report = CleanupReport(older_than_days=older_than_days, dry_run=dry_run)
    now = datetime.now(UTC)
    cutoff = now - timedelta(days=older_than_days) if older_than_days > 0 else None
    await _clean_finished(client, report, cutoff)

    report.files_dir = local_files_dir(settings)
    if report.files_dir is not None:
        orphan_cutoff = min(time.time() - orphan_min_age_s, (cutoff or now).timestamp())
        await _clean_orphans(client, report, report.files_dir, orphan_cutoff)
    verb = "would delete" if dry_run else "deleted"
    log.info(
        "cleanup: %s %d finished-request files and %d orphans (%d errors)",
        verb,
        len(report.files_deleted),
        len(report.orphans_deleted),
        len(report.errors),
    )
    return report
