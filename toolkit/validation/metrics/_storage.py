"""Parse storage used by batch files (the plan's "Parse storage usage" metric, target < 1 GB/day).

Three figures, all read from Parse with the master key:

- what is stored now: requests that still reference a batch file, and the compressed bytes of
  those files (``batchMetadata.compressed_size_bytes``, as recorded at upload);
- what is due for cleanup: the files ``toolkit cleanup`` would delete under the configured policy
  (finished more than ``cleanup_after_days`` ago), found by a dry run of the cleanup itself, plus
  orphan files on a local stack;
- bytes per day: compressed bytes of batch files created per UTC day in a window, whether or not
  they were cleaned since, against the daily target.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from toolkit.parse import ParseClient
from toolkit.parse.cleanup import cleanup_finished_files
from toolkit.parse.schema import BATCH_MEMORY_REQUEST
from toolkit.settings import Settings

__all__ = ["DAILY_TARGET_BYTES", "StorageAccount", "storage_account", "storage_days_over"]

DAILY_TARGET_BYTES = 1_000_000_000  # the plan's "< 1 GB/day"
_PAGE = 100


@dataclass(frozen=True)
class StorageAccount:
    stored_files: int
    stored_bytes: int
    due_files: int
    due_bytes: int
    orphan_files: int | None  # None when no local files directory could be scanned (not a local stack)
    cleanup_after_days: float
    per_day: pd.DataFrame  # day (UTC), batches, compressed_bytes, over_target

    def summary(self) -> pd.DataFrame:
        """A two-column table for a notebook."""
        days = f"finished > {self.cleanup_after_days:g} days ago"
        orphans = "n/a" if self.orphan_files is None else f"{self.orphan_files:,}"
        rows = [
            ("batch files stored now", f"{self.stored_files:,}"),
            ("compressed bytes stored now", f"{self.stored_bytes:,}"),
            (f"files due for cleanup ({days})", f"{self.due_files:,}"),
            ("compressed bytes due for cleanup", f"{self.due_bytes:,}"),
            ("orphan files (local stack only)", orphans),
            ("largest day in the window (bytes)", f"{int(self.per_day.compressed_bytes.max() or 0):,}"),
        ]
        return pd.DataFrame(rows, columns=["figure", "value"])


async def _stored(parse: ParseClient) -> dict[str, int]:
    """File name -> compressed bytes, for every request that still references a file."""
    sizes: dict[str, int] = {}
    last: str | None = None
    while True:
        where: dict = {"batchDataFile": {"$exists": True}}
        if last:
            where["objectId"] = {"$gt": last}
        rows = await parse.find(
            BATCH_MEMORY_REQUEST,
            where,
            limit=_PAGE,
            order="objectId",
            keys="batchDataFile,batchMetadata",
            master=True,
        )
        for row in rows:
            metadata = row.get("batchMetadata") or {}
            size = metadata.get("compressed_size_bytes") if isinstance(metadata, dict) else None
            sizes[row["batchDataFile"]["name"]] = int(size) if isinstance(size, int | float) else 0
        if len(rows) < _PAGE:
            return sizes
        last = rows[-1]["objectId"]


def _per_day(batches: pd.DataFrame, target: int) -> pd.DataFrame:
    ref = batches[batches.storage == "reference"]
    if ref.empty:
        return pd.DataFrame({"day": [], "batches": [], "compressed_bytes": [], "over_target": []})
    day = ref.created_at.dt.floor("D")
    table = (
        ref.assign(day=day)
        .groupby("day")
        .agg(batches=("batch_id", "size"), compressed_bytes=("compressed_bytes", "sum"))
        .reset_index()
    )
    table["compressed_bytes"] = table.compressed_bytes.astype("int64")
    table["over_target"] = table.compressed_bytes >= target
    return table


def storage_days_over(per_day: pd.DataFrame) -> list[str]:
    """The days of :attr:`StorageAccount.per_day` at or over its target, in words (the notebook's gate)."""
    over = per_day[per_day["over_target"].astype(bool)] if len(per_day) else per_day
    return [
        f"{pd.Timestamp(row.day):%Y-%m-%d}: {int(row.compressed_bytes):,} B in {int(row.batches)} batch files"
        for row in over.itertuples()
    ]


async def storage_account(
    settings: Settings,
    since: datetime,
    until: datetime | None = None,
    *,
    daily_target_bytes: int = DAILY_TARGET_BYTES,
) -> StorageAccount:
    """Storage of batch files now, what cleanup would free, and bytes per day over ``[since, until)``."""
    from toolkit.validation.metrics._batches import collect_batches

    async with ParseClient(settings) as parse:
        stored = await _stored(parse)
        # The cleanup's own dry run decides what is due, so this figure cannot drift from what it deletes.
        report = await cleanup_finished_files(
            parse, settings, older_than_days=settings.cleanup_after_days, dry_run=True
        )
    batches = await collect_batches(settings, since, until, with_temporal=False)
    return StorageAccount(
        stored_files=len(stored),
        stored_bytes=sum(stored.values()),
        due_files=len(report.files_deleted) + len(report.orphans_deleted),
        due_bytes=sum(stored.get(name, 0) for name in report.files_deleted),
        orphan_files=None if report.files_dir is None else len(report.orphans_deleted),
        cleanup_after_days=settings.cleanup_after_days,
        per_day=_per_day(batches, daily_target_bytes),
    )
