"""Recorded histories replay on the current workflow code (issue 11).

Each file in ``histories/`` is a real run recorded by ``python -m tests.replay.record``. If a change to
``toolkit/temporal/workflows.py`` would make a run in flight take a different path on replay (a new activity,
a reordered one, a changed fan-out window), its worker would fail that run with a nondeterminism error after
the deploy; here it fails CI first. A change that must alter the commands goes behind
``workflow.patched(...)`` so old histories still replay.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from toolkit.temporal import workflows
from toolkit.temporal.batch_types import BatchReference, BatchSummary
from toolkit.temporal.workflows import (
    LEGACY_WORKFLOW,
    NEW_WORKFLOW,
    ProcessBatchMemoryFromRequestWorkflow,
    ProcessBatchMemoryWorkflow,
)
from toolkit.validation.workloads import synthetic_memories

HISTORIES = Path(__file__).resolve().parent / "histories"
FIXTURES = sorted(HISTORIES.rglob("*.json"))  # a release may keep its set in a subfolder
# The recorder's synthetic content size (tests/replay/record.py); the content check depends on it.
CONTENT_BYTES = 64

# What the reference path may carry in its payloads: ids, counts, statuses, reasons. Never content.
REFERENCE_PAYLOAD_KEYS = {
    "request_id",
    "batch_id",
    "status",
    "total",
    "successful",
    "failed",
    "webhook_sent",
    "next",
    "ok",
    "delivered",
    "attempts",
    "skipped_reason",
    "reference",
    "reason",
    # Chunked batches (a plan, one reference per chunk, the failed chunks) and patch markers.
    "total_chunks",
    "chunk_window",
    "webhook_configured",
    "chunk_num",
    "failed_chunks",
    "id",
    "deprecated",
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def history_of(path: Path) -> WorkflowHistory:
    # The workflow id only names the run in replay errors; the file name says which fixture it is.
    return WorkflowHistory.from_json(path.stem, path.read_text())


def workflow_type(history: dict[str, Any]) -> str:
    return history["events"][0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"]


def event_types(history: dict[str, Any]) -> list[str]:
    return [event["eventType"] for event in history["events"]]


def payloads(value: Any) -> Iterator[Any]:
    """Every payload in the history, decoded from base64 JSON."""
    if isinstance(value, dict):
        if isinstance(value.get("data"), str) and "metadata" in value:
            yield json.loads(base64.b64decode(value["data"]))
        for item in value.values():
            yield from payloads(item)
    elif isinstance(value, list):
        for item in value:
            yield from payloads(item)


def keys_of(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


def test_fixtures_exist() -> None:
    assert len(FIXTURES) >= 10, f"expected the recorded set in {HISTORIES}, found {len(FIXTURES)}"


@pytest.mark.parametrize("path", FIXTURES, ids=[str(p.relative_to(HISTORIES)) for p in FIXTURES])
async def test_history_replays_on_current_code(path: Path) -> None:
    replayer = Replayer(workflows=[ProcessBatchMemoryFromRequestWorkflow, ProcessBatchMemoryWorkflow])
    result = await replayer.replay_workflow(history_of(path))
    assert result.replay_failure is None


def test_fixtures_cover_both_workflows_sizes_retries_failures_and_runs_in_flight() -> None:
    histories = {path.stem: load(path) for path in FIXTURES}
    by_type = {NEW_WORKFLOW: [], LEGACY_WORKFLOW: []}
    for history in histories.values():
        by_type[workflow_type(history)].append(history)
    for name, group in by_type.items():
        closed = [h for h in group if event_types(h)[-1].startswith("EVENT_TYPE_WORKFLOW_EXECUTION_")]
        running = [h for h in group if not event_types(h)[-1].startswith("EVENT_TYPE_WORKFLOW_EXECUTION_")]
        sizes = {p["total"] for h in closed for p in payloads(h) if isinstance(p, dict) and "total" in p}
        assert len(sizes) >= 3, f"{name}: recorded sizes {sorted(sizes)}"
        assert running, f"{name}: no history recorded while the run was in flight"
    reference = by_type[NEW_WORKFLOW]
    attempts = [
        event["activityTaskStartedEventAttributes"]["attempt"]
        for history in reference
        for event in history["events"]
        if "activityTaskStartedEventAttributes" in event
    ]
    assert max(attempts) >= 2, "no history with a retried activity"
    assert any("EVENT_TYPE_WORKFLOW_EXECUTION_FAILED" in event_types(h) for h in reference)


def test_histories_hold_no_credential_machine_detail_or_real_content() -> None:
    credential = re.compile(r"r:[0-9a-f]{32}|master-[0-9a-f]{32}|rest-[0-9a-f]{32}|whsec", re.I)
    synthetic = {m["content"] for m in synthetic_memories(2000, content_bytes=CONTENT_BYTES)}
    rejected = re.compile(r"rejected \x00 \d+")
    checked_contents = 0
    for path in FIXTURES:
        history = load(path)
        text = path.read_text() + json.dumps(list(payloads(history)))
        assert not credential.search(text), f"{path.name}: a credential-shaped value"
        assert not re.search(r'"stackTrace": "[^"]', text), f"{path.name}: a stack trace (machine paths)"
        identities = set(re.findall(r'"identity": "([^"]*)"', text))
        assert identities <= {"replay-recorder", ""}, f"{path.name}: worker identities {identities}"
        contents = [
            v["content"] for p in payloads(history) for v in _dicts(p) if isinstance(v.get("content"), str)
        ]
        if workflow_type(history) == NEW_WORKFLOW:
            keys = set().union(*(keys_of(p) for p in payloads(history)))
            assert keys <= REFERENCE_PAYLOAD_KEYS, f"{path.name}: unexpected payload keys {keys}"
            assert not contents
        else:
            # Legacy histories carry memory content by design: only the recorder's synthetic text.
            assert all(c in synthetic or rejected.fullmatch(c) for c in contents), path.name
            checked_contents += len(contents)
    assert checked_contents > 0, "the content check saw no legacy content: it could not fail"


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _dicts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _dicts(item)


# ---- the check can fail: deliberately incompatible workflow changes are caught ----------------------


@workflow.defn(name=NEW_WORKFLOW, sandboxed=False)
class WebhookFirstWorkflow:
    """An incompatible change: the webhook activity scheduled before the processing one."""

    @workflow.run
    async def run(self, reference: BatchReference) -> BatchSummary:
        await workflow.execute_activity(
            "send_batch_webhook", reference, start_to_close_timeout=timedelta(minutes=1)
        )
        return await workflow.execute_activity(
            "fetch_and_process_batch_memories",
            reference,
            result_type=BatchSummary,
            start_to_close_timeout=timedelta(hours=1),
        )


async def test_reordered_activities_fail_replay_of_reference_histories() -> None:
    replayer = Replayer(workflows=[WebhookFirstWorkflow], workflow_runner=UnsandboxedWorkflowRunner())
    paths = [p for p in FIXTURES if workflow_type(load(p)) == NEW_WORKFLOW]
    results = await replayer.replay_workflows(_iterate(paths), raise_on_replay_failure=False)
    failures = results.replay_failures
    assert len(failures) == len(paths), f"only {len(failures)} of {len(paths)} histories noticed the change"
    assert all(isinstance(e, workflow.NondeterminismError) for e in failures.values())


async def test_a_changed_fan_out_window_fails_replay_of_legacy_histories(monkeypatch) -> None:
    # A one-constant change that looks harmless: runs past the old window would schedule differently.
    monkeypatch.setattr(workflows, "LEGACY_WINDOW", 10)
    replayer = Replayer(workflows=[ProcessBatchMemoryWorkflow], workflow_runner=UnsandboxedWorkflowRunner())
    wide = [p for p in FIXTURES if workflow_type(load(p)) == LEGACY_WORKFLOW and _legacy_size(p) > 10]
    assert wide, "no legacy history wider than the changed window"
    results = await replayer.replay_workflows(_iterate(wide), raise_on_replay_failure=False)
    assert len(results.replay_failures) == len(wide)


def _legacy_size(path: Path) -> int:
    started = load(path)["events"][0]["workflowExecutionStartedEventAttributes"]
    [batch] = [json.loads(base64.b64decode(p["data"])) for p in started["input"]["payloads"]]
    return len(batch["memories"])


async def _iterate(paths: list[Path]):
    for path in paths:
        yield history_of(path)
