"""The audit's two figures, Temporal's limits drawn as lines: headroom per type, and the distributions."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from toolkit.validation.audit.limits import (
    BLOB,
    GRPC,
    HISTORY_BYTES,
    HISTORY_BYTES_WARNING,
    HISTORY_EVENTS,
    HISTORY_EVENTS_WARNING,
    SDK_PAYLOAD_WARNING,
    Limit,
    format_bytes,
)
from toolkit.validation.audit.report import AuditReport
from toolkit.validation.audit.scan import PAYLOAD_KINDS

__all__ = ["plot_distributions", "plot_headroom"]

_COLOURS = ("tab:orange", "tab:red", "tab:purple", "tab:brown", "black")


def _limit_lines(ax: Axes, limits: tuple[Limit, ...], *, vertical: bool) -> None:
    """Warnings dashed, errors solid, one colour per limit."""
    for limit, colour in zip(limits, _COLOURS, strict=False):
        style = "-" if limit.error else "--"
        label = f"{limit.name} ({format_bytes(limit.value, limit.unit)})"
        line = ax.axvline if vertical else ax.axhline
        line(limit.value, linestyle=style, color=colour, linewidth=1, label=label)


def plot_headroom(report: AuditReport) -> Figure:
    """Per type, its largest payload, largest request, largest history (bytes) and longest history (events),
    against the limits each is held to."""
    types = report.types
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 1.6 + 0.9 * max(1, len(types))))
    names = list(types.workflow_type)
    y = range(len(names))
    payload = types[[f"largest_{kind}" for kind in PAYLOAD_KINDS]].max(axis=1)
    bars = [
        ("largest payload", payload, -0.27),
        ("largest request", types.largest_request, 0.0),
        ("largest history", types.history_bytes_max.fillna(0), 0.27),
    ]
    for label, values, offset in bars:
        left.barh([i + offset for i in y], values.clip(lower=1), height=0.25, label=label)
    _limit_lines(left, (SDK_PAYLOAD_WARNING, BLOB, GRPC, HISTORY_BYTES_WARNING, HISTORY_BYTES), vertical=True)
    left.set(xscale="log", xlabel="bytes (log scale)", title="Headroom in bytes: payloads, requests, history")
    right.barh(list(y), types.history_events_max.fillna(0).clip(lower=1), height=0.5, label="longest history")
    _limit_lines(right, (HISTORY_EVENTS_WARNING, HISTORY_EVENTS), vertical=True)
    right.set(xscale="log", xlabel="events (log scale)", title="Headroom in events: history length")
    for ax in (left, right):
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        ax.grid(True, axis="x", which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Payload audit of namespace {report.data.namespace!r}: each type against Temporal's limits")
    fig.tight_layout()
    return fig


def plot_distributions(report: AuditReport) -> Figure:
    """History bytes and events of every listed run with a known size, per type, against the limits."""
    runs = report.runs.dropna(subset=["history_bytes"])
    groups = [(str(name), frame) for name, frame in runs.groupby("workflow_type", sort=True)]
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8))
    panels = [
        ("history_bytes", "history size (bytes, log scale)", (HISTORY_BYTES_WARNING, HISTORY_BYTES)),
        ("history_events", "history length (events, log scale)", (HISTORY_EVENTS_WARNING, HISTORY_EVENTS)),
    ]
    for ax, (column, label, limits) in zip(axes, panels, strict=True):
        if groups:
            ax.boxplot(
                [frame[column].clip(lower=1).astype(float) for _, frame in groups],
                tick_labels=[name for name, _ in groups],
                vert=True,
                showfliers=True,
            )
        _limit_lines(ax, limits, vertical=False)
        ax.set(yscale="log", ylabel=label, title=f"{label.split(' (')[0]} per run, by workflow type")
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Distributions over {len(runs):,} runs with a known size ({report.data.window.describe()})")
    fig.tight_layout()
    return fig
