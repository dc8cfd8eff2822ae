"""The third column of the payload notebook: the legacy path with Temporal external storage on.

:func:`run_driver_sweep` runs :func:`measure_legacy_with_driver` at each size (the legacy workflow
started by a client whose :class:`~toolkit.temporal.external_storage.ParseFilesStorageDriver` stores
payloads of at least ``threshold`` bytes in Parse Files and leaves a claim in the history).
:func:`driver_comparison` puts it beside the reference and legacy columns of
:func:`~toolkit.validation.metrics.payload_reduction`, and :func:`driver_gate_failures` checks what the driver
promises: the workflow input becomes a small claim, and the batch still completes.

What it does not promise, and what is therefore not gated: a small history. The legacy workflow fans
every memory out into an activity input far below any sensible threshold, so those inputs stay inline
and the history stays of the order of the legacy one (see the README, "Temporal external storage").
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta

import pandas as pd

from toolkit.parse import ParseClient
from toolkit.parse.users import sign_up
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.temporal.starter import store_and_start
from toolkit.validation.perf.history import measure_history
from toolkit.validation.workloads import make_memories

__all__ = [
    "DRIVER_COLUMNS",
    "DriverRunFigures",
    "measure_legacy_with_driver",
    "DRIVER_MAX_INPUT_BYTES",
    "driver_comparison",
    "driver_gate_failures",
    "run_driver_sweep",
]

# The driver's claim is ~237 B (driver name, a sha256 digest and the Parse file name). A workflow input
# over 1 KiB means the batch, or part of it, is in the history again.
DRIVER_MAX_INPUT_BYTES = 1_024

DRIVER_COLUMNS = [
    "workload",
    "memories",
    "threshold",
    "input_bytes",
    "externally_stored_bytes",
    "history_bytes",
    "history_events",
    "seconds",
    "status",
    "error",
    "workflow_id",
    "batch_id",
]

# The three paths side by side, in this order, for each figure.
PATHS = ("reference", "legacy", "driver")
FIGURES = ("input_bytes", "history_bytes", "history_events")


@dataclass(frozen=True)
class DriverRunFigures:
    """One legacy batch started through a driver-enabled client (a ``toolkit.validation.metrics``-style
    row)."""

    workload: str
    memories: int
    threshold: int  # payloads of at least this many bytes went to Parse Files
    workflow_id: str
    batch_id: str
    status: str  # the batch's final status (BatchSummary.status)
    input_bytes: int  # workflow input as it sits in the history (the claim when it was stored)
    externally_stored_bytes: int  # bytes the claim stands for (0: the input stayed inline)
    history_bytes: int
    history_events: int
    seconds: float  # submit to result


async def measure_legacy_with_driver(
    settings: Settings,
    memories: int,
    *,
    workload: str = "chitchat",
    threshold: int | None = None,
    timeout: timedelta = timedelta(minutes=10),
) -> DriverRunFigures:
    """Run the legacy path for ``memories`` memories with the driver on; return its payload figures.

    The third column of the payload notebook ("transparent" claim check): the same batch as the
    reference and legacy columns, started by a client that stores payloads of at least ``threshold``
    bytes (default: the settings' ``TEMPORAL_EXTERNAL_STORAGE_THRESHOLD``) in Parse Files. It runs on the
    stack's worker(s) on ``settings.temporal_task_queue``; they read the claim whatever their own switch.

    Only the workflow input is a large payload: the per-memory activity inputs the legacy workflow
    builds stay far below any sensible threshold, so they are still written to the history inline.
    A new Parse user owns the batch. Raises ``TimeoutError`` if the batch does not finish in ``timeout``.
    """
    storing = dataclasses.replace(
        settings,
        temporal_external_storage=True,
        temporal_external_storage_threshold=(
            settings.temporal_external_storage_threshold if threshold is None else threshold
        ),
    )
    temporal = await connect(storing)
    batch = make_memories(workload, memories)
    async with ParseClient(settings) as parse:
        user = await sign_up(parse)
        started = time.perf_counter()
        submitted = await store_and_start(temporal, parse, storing, user, batch, legacy=True)
        try:
            summary = await asyncio.wait_for(submitted.result(), timeout.total_seconds())
        except TimeoutError:
            # Never leave a legacy run behind: the runbook's cleanup check counts running ones.
            await submitted.handle.terminate(reason=f"measurement gave up after {timeout}")
            raise
        seconds = time.perf_counter() - started
    figures = await measure_history(submitted.handle)
    history = await submitted.handle.fetch_history()
    started_event = history.events[0].workflow_execution_started_event_attributes
    external = sum(e.size_bytes for p in started_event.input.payloads for e in p.external_payloads)
    return DriverRunFigures(
        workload=workload,
        memories=memories,
        threshold=storing.temporal_external_storage_threshold,
        workflow_id=submitted.handle.id,
        batch_id=submitted.batch_id,
        status=summary.status,
        input_bytes=figures.input_bytes,
        externally_stored_bytes=external,
        history_bytes=figures.history_bytes,
        history_events=figures.history_events,
        seconds=seconds,
    )


async def run_driver_sweep(
    settings: Settings,
    sizes: Sequence[int],
    *,
    workload: str = "chitchat",
    threshold: int | None = None,
    timeout: timedelta = timedelta(minutes=10),
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """The legacy path with the driver on, one batch per size, in order; one row per size (``log``: a
    line as each size starts).

    ``threshold`` (bytes) defaults to the settings' ``TEMPORAL_EXTERNAL_STORAGE_THRESHOLD``. The batches
    run on the worker(s) of ``settings.temporal_task_queue``. A size whose run raises (timeout, a
    workflow failure, a server refusal) is a row with its ``error`` and no figures, not a crash:
    :func:`driver_gate_failures` reports it.
    """
    rows = []
    for memories in sizes:
        if log is not None:
            log(f"legacy path with external storage: {memories:,} {workload} memories ...")
        try:
            figures = await measure_legacy_with_driver(
                settings, memories, workload=workload, threshold=threshold, timeout=timeout
            )
        except Exception as exc:  # a failed size is a result (see the docstring)
            stored = settings.temporal_external_storage_threshold if threshold is None else threshold
            rows.append(
                {
                    "workload": workload,
                    "memories": memories,
                    "threshold": stored,
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                }
            )
            continue
        rows.append({**asdict(figures), "error": None})
    return pd.DataFrame(rows, columns=DRIVER_COLUMNS)


def driver_comparison(reduction: pd.DataFrame, driver: pd.DataFrame) -> pd.DataFrame:
    """One row per batch size: reference, legacy and legacy + driver side by side.

    ``reduction`` is a :func:`~toolkit.validation.metrics.payload_reduction` table, ``driver`` a
    :func:`run_driver_sweep` frame of the same workload. For each of input bytes, history bytes and
    history events there are ``reference_*``, ``legacy_*`` and ``driver_*`` columns; then the driver's
    threshold, externally stored bytes, status, seconds and error, ``legacy_error``, and
    ``driver_history_reduction_pct`` (how much smaller the driver's history is than the legacy one).
    A size only one side ran keeps NaN in the other's columns.
    """
    workloads = set(reduction.workload.dropna()) | set(driver.workload.dropna())
    if len(workloads) > 1:
        raise ValueError(f"the tables measure different workloads ({', '.join(sorted(workloads))})")
    left = reduction.set_index("memories")
    right = driver.set_index("memories")[
        ["input_bytes", "history_bytes", "history_events", "threshold", "externally_stored_bytes"]
        + ["status", "seconds", "error"]
    ].add_prefix("driver_")
    table = left.join(right, how="outer")
    table.index.name = "memories"
    old, new = table.legacy_history_bytes.astype("float64"), table.driver_history_bytes.astype("float64")
    table["driver_history_reduction_pct"] = (100.0 * (1 - new / old)).where(old.notna() & (old > 0))
    table["workload"] = next(iter(workloads), None)
    columns = ["workload"] + [f"{path}_{figure}" for figure in FIGURES for path in PATHS]
    columns += [
        "driver_threshold",
        "driver_externally_stored_bytes",
        "driver_status",
        "driver_seconds",
        "driver_error",
        "legacy_error",
        "driver_history_reduction_pct",
    ]
    return table[columns].reset_index()


def driver_gate_failures(
    comparison: pd.DataFrame, *, max_input_bytes: int = DRIVER_MAX_INPUT_BYTES
) -> list[str]:
    """The driver's gates against a :func:`driver_comparison` table; [] when all pass.

    Every size the driver ran must have completed. At every size whose legacy input was at least the
    driver's threshold (the payload the driver was meant to store), the driver's workflow input must be
    a claim of at most ``max_input_bytes``. The legacy input is the legacy column's where the legacy
    path ran that size, else the payload the driver run itself carried (the bytes it stored, or its
    input when that stayed inline). A table in which no size reached the threshold tests nothing and
    fails. The history is not gated: the driver does not make the legacy history small.
    """
    failures = []
    ran = comparison[comparison.driver_threshold.notna()]
    if ran.empty:
        return ["the legacy + driver path ran no size"]
    checked = 0
    for row in ran.itertuples():
        size = f"{row.memories:,} memories"
        if isinstance(row.driver_error, str):
            failures.append(f"{size}: the legacy + driver run failed: {row.driver_error}")
            continue
        if row.driver_status != "completed":
            failures.append(f"{size}: the legacy + driver batch ended {row.driver_status!r}, not 'completed'")
        if not pd.isna(row.legacy_input_bytes):
            legacy_input = row.legacy_input_bytes
        elif row.driver_externally_stored_bytes > 0:
            legacy_input = row.driver_externally_stored_bytes
        else:
            legacy_input = row.driver_input_bytes
        if legacy_input < row.driver_threshold:
            continue
        checked += 1
        if row.driver_input_bytes > max_input_bytes:
            failures.append(
                f"{size}: legacy + driver workflow input {row.driver_input_bytes:,.0f} B > "
                f"{max_input_bytes:,} B (legacy input {legacy_input:,.0f} B >= threshold "
                f"{row.driver_threshold:,.0f} B: it should be a claim)"
            )
    if not checked and not failures:
        failures.append(
            "no size's legacy input reached the driver's threshold "
            f"({', '.join(f'{t:,.0f} B' for t in sorted(set(ran.driver_threshold)))}): nothing was stored, "
            "the claim gate tested nothing; lower the threshold or add a larger size"
        )
    return failures
