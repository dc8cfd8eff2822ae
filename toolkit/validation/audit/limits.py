"""Temporal's limits, what each measure of a history is held against, and the verdict words.

The values are the server's and the Python SDK's defaults (verified on the dev server, README "Temporal
limits"); a cluster can lower them. A measure is compared with the nearest limit it has not reached yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "LIMITS",
    "MEASURES",
    "Headroom",
    "Limit",
    "Verdict",
    "format_bytes",
    "headroom",
    "verdict_for",
]

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Limit:
    name: str
    value: int
    unit: str  # "bytes" or "events"
    error: bool  # True: the server refuses or terminates past it; False: a warning is logged


SDK_PAYLOAD_WARNING = Limit("SDK payload warning (TMPRL1103)", 512 * KIB, "bytes", error=False)
BLOB = Limit("blob limit", 2 * MIB, "bytes", error=True)
GRPC = Limit("gRPC message limit", 4 * MIB, "bytes", error=True)
HISTORY_BYTES_WARNING = Limit("history size warning", 10 * MIB, "bytes", error=False)
HISTORY_BYTES = Limit("history size limit", 50 * MIB, "bytes", error=True)
HISTORY_EVENTS_WARNING = Limit("history length warning", 10_240, "events", error=False)
HISTORY_EVENTS = Limit("history length limit", 51_200, "events", error=True)
LIMITS = (
    SDK_PAYLOAD_WARNING,
    BLOB,
    GRPC,
    HISTORY_BYTES_WARNING,
    HISTORY_BYTES,
    HISTORY_EVENTS_WARNING,
    HISTORY_EVENTS,
)

_PAYLOAD = (SDK_PAYLOAD_WARNING, BLOB)
# measure → (words, the limits it is held against, lowest first)
MEASURES: dict[str, tuple[str, tuple[Limit, ...]]] = {
    "workflow_input": ("workflow input", _PAYLOAD),
    "workflow_result": ("workflow result", _PAYLOAD),
    "activity_input": ("activity input", _PAYLOAD),
    "activity_result": ("activity result", _PAYLOAD),
    "signal": ("signal input", _PAYLOAD),
    "memo": ("memo", _PAYLOAD),
    "failure": ("failure details", _PAYLOAD),
    "largest_request": ("largest request (one workflow task's commands, or one event)", (GRPC,)),
    "history_bytes": ("history size", (HISTORY_BYTES_WARNING, HISTORY_BYTES)),
    "history_events": ("history length", (HISTORY_EVENTS_WARNING, HISTORY_EVENTS)),
}


class Verdict(StrEnum):
    AT_RISK = "at risk"
    WATCH = "watch"
    FINE = "fine"


# At risk: a warning level reached, or half of an error limit. Watch: half a warning level, or a quarter of an
# error limit. A 1.5 MiB input (75 % of the blob limit, past the SDK's warning) is at risk; 300 KiB is watch.
_AT_RISK = {False: 1.0, True: 0.5}
_WATCH = {False: 0.5, True: 0.25}


@dataclass(frozen=True)
class Headroom:
    measure: str
    value: int
    limit: Limit  # the nearest limit not yet reached (the highest one when all are)
    used_pct: float  # value as a percentage of that limit
    left: int  # limit minus value (negative when past it)
    verdict: Verdict
    reason: str  # in words: "the largest workflow input, 1.50 MiB, is 75.0 % of the 2 MiB blob limit"


def format_bytes(value: float, unit: str = "bytes") -> str:
    if unit != "bytes":
        return f"{value:,.0f} {unit}"
    for suffix, size in (("MiB", MIB), ("KiB", KIB)):
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:,.0f} {suffix}" if scaled == int(scaled) else f"{scaled:,.2f} {suffix}"
    return f"{value:,.0f} B"


def _severity(value: int, limits: Sequence[Limit]) -> Verdict:
    def reaches(thresholds: dict[bool, float]) -> bool:
        return any(value >= limit.value * thresholds[limit.error] for limit in limits)

    if reaches(_AT_RISK):
        return Verdict.AT_RISK
    return Verdict.WATCH if reaches(_WATCH) else Verdict.FINE


def headroom(measure: str, value: int) -> Headroom:
    words, limits = MEASURES[measure]
    nearest = next((limit for limit in limits if value < limit.value), limits[-1])
    used = 100.0 * value / nearest.value
    verdict = _severity(value, limits)
    reason = (
        f"the largest {words}, {format_bytes(value, nearest.unit)}, is {used:.1f} % of the "
        f"{format_bytes(nearest.value, nearest.unit)} {nearest.name}"
    )
    passed = [limit for limit in limits if value >= limit.value]
    if passed:
        reason += f" (past the {format_bytes(passed[-1].value, passed[-1].unit)} {passed[-1].name})"
    return Headroom(measure, value, nearest, used, nearest.value - value, verdict, reason)


_ORDER = {Verdict.AT_RISK: 0, Verdict.WATCH: 1, Verdict.FINE: 2}


def verdict_for(rows: Sequence[Headroom]) -> tuple[Verdict, str]:
    """The worst verdict of a workflow type's measures, and the reason of its closest measure."""
    if not rows:
        return Verdict.FINE, "nothing measured"
    worst = min(rows, key=lambda row: (_ORDER[row.verdict], -row.used_pct))
    return worst.verdict, worst.reason
