"""The plan's monitoring dashboards as tables: per path, over a window, from :func:`collect_batches` rows.

The aggregations are plain functions of the batches frame, so a notebook can draw them for any window
of any stack; only :func:`running_legacy_workflows` asks a server (Temporal's visibility store).
"""

from __future__ import annotations

import pandas as pd

from toolkit.parse.models import FINISHED_STATUSES
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.temporal.workflows import LEGACY_WORKFLOW

__all__ = [
    "LEGACY_RUNNING_QUERY",
    "error_rates",
    "path_summary",
    "per_period",
    "running_legacy_workflows",
]

PERIOD_COLUMNS = ["period", "path", "batches", "finished", "success_rate", "p50_ms", "p95_ms"]
PATH_COLUMNS = [
    "path",
    "batches",
    "memories",
    "success_rate",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "memory_error_rate",
]
LEGACY_RUNNING_QUERY = f'WorkflowType="{LEGACY_WORKFLOW}" AND ExecutionStatus="Running"'


def _path(batches: pd.DataFrame) -> pd.Series:
    return batches.storage.fillna("unknown")


def per_period(batches: pd.DataFrame, freq: str = "1h") -> pd.DataFrame:
    """Per ``freq`` period (by creation time) and path: batches, success rate, p50/p95 end-to-end ms.

    Success rate = completed batches / finished batches (``partial`` and ``failed`` count against it);
    unfinished batches count in ``batches`` only. Columns: period, path, batches, finished,
    success_rate, p50_ms, p95_ms.
    """
    if batches.empty:
        return pd.DataFrame(columns=PERIOD_COLUMNS)
    frame = batches.assign(
        period=batches.created_at.dt.floor(freq),
        path=_path(batches),
        finished=batches.status.isin(FINISHED_STATUSES),
        ok=batches.status == "completed",
    )
    grouped = frame.groupby(["period", "path"])
    table = grouped.agg(
        batches=("batch_id", "size"),
        finished=("finished", "sum"),
        ok=("ok", "sum"),
        p50_ms=("end_to_end_ms", lambda s: s.quantile(0.5)),
        p95_ms=("end_to_end_ms", lambda s: s.quantile(0.95)),
    ).reset_index()
    table["success_rate"] = (table.ok / table.finished.where(table.finished > 0)).astype("float64")
    return table[PERIOD_COLUMNS]


def path_summary(batches: pd.DataFrame) -> pd.DataFrame:
    """One row per path over the whole window: batches, memories, success rate, p50/p95/p99 end to end."""
    if batches.empty:
        return pd.DataFrame(columns=PATH_COLUMNS)
    frame = batches.assign(
        path=_path(batches), finished=batches.status.isin(FINISHED_STATUSES), ok=batches.status == "completed"
    )
    table = (
        frame.groupby("path")
        .agg(
            batches=("batch_id", "size"),
            memories=("total", "sum"),
            finished=("finished", "sum"),
            ok=("ok", "sum"),
            failed_memories=("failed", "sum"),
            p50_ms=("end_to_end_ms", lambda s: s.quantile(0.5)),
            p95_ms=("end_to_end_ms", lambda s: s.quantile(0.95)),
            p99_ms=("end_to_end_ms", lambda s: s.quantile(0.99)),
        )
        .reset_index()
    )
    table["success_rate"] = (table.ok / table.finished.where(table.finished > 0)).astype("float64")
    table["memory_error_rate"] = table.failed_memories.astype("float64") / table.memories.astype(
        "float64"
    ).where(table.memories > 0)
    return table[
        ["path", "batches", "memories", "success_rate", "p50_ms", "p95_ms", "p99_ms", "memory_error_rate"]
    ]


def error_rates(batches: pd.DataFrame, freq: str | None = None) -> pd.DataFrame:
    """Failed memories per error type and path, as a rate of the path's memories (in each period).

    Columns: [period,] path, error_type, errors, memories, rate. No row when nothing failed.
    """
    keys = ["path"] if freq is None else ["period", "path"]
    columns = [*keys, "error_type", "errors", "memories", "rate"]
    if batches.empty:
        return pd.DataFrame(columns=columns)
    frame = batches.assign(path=_path(batches))
    if freq is not None:
        frame = frame.assign(period=frame.created_at.dt.floor(freq))
    memories = frame.groupby(keys)["total"].sum().rename("memories")
    exploded = frame[[*keys, "error_types"]].explode("error_types").dropna(subset=["error_types"])
    if exploded.empty:
        return pd.DataFrame(columns=columns)
    counts = exploded.groupby([*keys, "error_types"]).size().rename("errors").reset_index()
    counts = counts.rename(columns={"error_types": "error_type"}).join(memories, on=keys)
    counts["rate"] = counts.errors / counts.memories.astype("float64")
    return counts[columns].sort_values([*keys, "errors"], ascending=[True] * len(keys) + [False])


async def running_legacy_workflows(settings: Settings, *, limit: int = 1000) -> pd.DataFrame:
    """Legacy workflows still running, from Temporal's visibility store (the cleanup precondition).

    Columns: workflow_id, run_id, start_time, task_queue. At most ``limit`` rows.
    """
    temporal = await connect(settings)
    rows = []
    async for execution in temporal.list_workflows(LEGACY_RUNNING_QUERY, limit=limit):
        rows.append(
            {
                "workflow_id": execution.id,
                "run_id": execution.run_id,
                "start_time": execution.start_time,
                "task_queue": execution.task_queue,
            }
        )
    return pd.DataFrame(rows, columns=["workflow_id", "run_id", "start_time", "task_queue"])
