"""Measure workflow payloads and histories on the real server (design §4.4, §6)."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.client import WorkflowHandle


@dataclass(frozen=True)
class HistoryFigures:
    workflow_id: str
    input_bytes: int  # serialized workflow input (payload data)
    history_bytes: int  # history_size_bytes as the server reports it
    history_events: int


async def measure_history(handle: WorkflowHandle) -> HistoryFigures:
    description = await handle.describe()
    info = description.raw_description.workflow_execution_info
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    input_bytes = sum(len(p.data) for p in started.input.payloads)
    return HistoryFigures(handle.id, input_bytes, info.history_size_bytes, info.history_length)
