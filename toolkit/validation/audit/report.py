"""The audit's answer: per workflow type a table, the headroom to each limit, and a verdict in words.

- ``types``: one row per workflow type: runs listed, histories fetched, history bytes and events
  (p50/p95/max over every listed run with a known size), the largest payload of each kind and the largest
  request (over the fetched histories), what external storage at the threshold would move out, the verdict.
- ``headroom``: one row per type and measure: the value, the nearest limit, % of it used, what is left.
- ``verdicts``: one sentence per type, worst first.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import pandas as pd

from toolkit.validation.audit.collect import AuditData
from toolkit.validation.audit.limits import MEASURES, Headroom, Verdict, format_bytes, headroom, verdict_for
from toolkit.validation.audit.scan import PAYLOAD_KINDS, HistoryScan

__all__ = ["AuditReport", "build_report"]


def _percentile(values: list[int], q: float) -> float | None:
    return float(pd.Series(values, dtype="float64").quantile(q)) if values else None


def _measures(
    scans: list[HistoryScan], history_bytes: list[int], history_events: list[int]
) -> list[Headroom]:
    rows: list[Headroom] = []
    for kind in PAYLOAD_KINDS:
        largest = max((scan.largest[kind] for scan in scans), default=0)
        if largest:
            rows.append(headroom(kind, largest))
    if scans:
        rows.append(headroom("largest_request", max(scan.largest_request for scan in scans)))
    if history_bytes:
        rows.append(headroom("history_bytes", max(history_bytes)))
        rows.append(headroom("history_events", max(history_events)))
    return rows


@dataclass
class AuditReport:
    data: AuditData
    types: pd.DataFrame
    headroom: pd.DataFrame
    runs: pd.DataFrame
    verdicts: list[str]

    @property
    def nothing_to_audit(self) -> bool:
        return not self.data.runs

    @property
    def histories_fetched(self) -> int:
        return sum(len(scans) for scans in self.data.scans.values())

    def message(self) -> str:
        """One line on what was read (or that there was nothing to read)."""
        data = self.data
        where = f"namespace {data.namespace!r} at {data.target}, runs started {data.window.describe()}"
        if self.nothing_to_audit:
            return f"nothing to audit: no workflow run in {where}"
        text = (
            f"{len(data.runs):,} runs of {len(self.types)} workflow types in {where}; "
            f"{self.histories_fetched:,} histories fetched (the {data.top_n} largest per type)"
        )
        if data.listing_truncated:
            text += f"; listing stopped at {len(data.runs):,} runs (max_listed): counts cover those only"
        if data.running_not_described:
            text += f"; {data.running_not_described:,} running runs not described (size unknown)"
        if data.gone:
            text += f"; {data.gone:,} histories were removed before they could be read"
        return text


def _type_row(
    data: AuditData, workflow_type: str, runs: pd.DataFrame
) -> tuple[dict[str, object], list[Headroom]]:
    scans = data.scans.get(workflow_type, [])
    known = runs[runs.history_bytes.notna()]
    history_bytes = [int(v) for v in known.history_bytes]
    history_events = [int(v) for v in known.history_events]
    measures = _measures(scans, history_bytes, history_events)
    verdict, reason = verdict_for(measures)
    row: dict[str, object] = {
        "workflow_type": workflow_type,
        "runs": len(runs),
        "running": int((runs.status == "RUNNING").sum()),
        "fetched": len(scans),
        "history_bytes_p50": _percentile(history_bytes, 0.5),
        "history_bytes_p95": _percentile(history_bytes, 0.95),
        "history_bytes_max": max(history_bytes, default=None),
        "history_events_p50": _percentile(history_events, 0.5),
        "history_events_p95": _percentile(history_events, 0.95),
        "history_events_max": max(history_events, default=None),
    }
    for kind in PAYLOAD_KINDS:
        row[f"largest_{kind}"] = max((scan.largest[kind] for scan in scans), default=0)
    row["largest_request"] = max((scan.largest_request for scan in scans), default=0)
    largest = max(scans, key=lambda scan: scan.history_bytes, default=None)
    shares = [100.0 * scan.movable_bytes / scan.history_bytes for scan in scans if scan.history_bytes > 0]
    row["ext_threshold"] = data.threshold
    row["ext_moved_pct_median"] = statistics.median(shares) if shares else None
    row["ext_largest_history_after"] = largest.history_after_storage if largest is not None else None
    row["verdict"] = str(verdict)
    row["reason"] = reason
    return row, measures


_VERDICT_ORDER = {str(Verdict.AT_RISK): 0, str(Verdict.WATCH): 1, str(Verdict.FINE): 2}


def build_report(data: AuditData) -> AuditReport:
    runs = pd.DataFrame(
        [vars(run) for run in data.runs],
        columns=[
            "workflow_id",
            "run_id",
            "workflow_type",
            "status",
            "history_bytes",
            "history_events",
            "start_time",
        ],
    )
    type_rows: list[dict[str, object]] = []
    headroom_rows: list[dict[str, object]] = []
    for workflow_type, members in runs.groupby("workflow_type", sort=True):
        row, measures = _type_row(data, str(workflow_type), members)
        type_rows.append(row)
        for measure in measures:
            headroom_rows.append(
                {
                    "workflow_type": workflow_type,
                    "measure": measure.measure,
                    "what": MEASURES[measure.measure][0],
                    "value": measure.value,
                    "nearest_limit": measure.limit.name,
                    "limit": measure.limit.value,
                    "unit": measure.limit.unit,
                    "used_pct": round(measure.used_pct, 2),
                    "left": measure.left,
                    "verdict": str(measure.verdict),
                }
            )
    types = pd.DataFrame(type_rows)
    if len(types):
        types = types.sort_values(
            ["verdict", "history_bytes_max"],
            key=lambda column: column.map(_VERDICT_ORDER) if column.name == "verdict" else -column.fillna(0),
        ).reset_index(drop=True)
    verdicts = [_sentence(row, data) for row in types.to_dict("records")]
    return AuditReport(data, types, pd.DataFrame(headroom_rows), runs, verdicts)


def _sentence(row: dict[str, object], data: AuditData) -> str:
    text = f"{row['workflow_type']}: {row['verdict']} — {row['reason']}"
    if row["ext_moved_pct_median"] is not None:
        text += (
            f". External storage at {format_bytes(data.threshold)} would move out a median "
            f"{row['ext_moved_pct_median']:.1f} % of the history"
        )
    return text + f" ({row['runs']:,} runs, {row['fetched']} histories read)."
