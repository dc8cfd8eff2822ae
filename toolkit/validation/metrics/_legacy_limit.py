"""The legacy path's failure point, found by trying on the real server (not by estimating).

Each probe starts the legacy workflow type with a real ``LegacyBatchInput`` of the first ``n``
memories, exactly as the legacy starter builds it, on a task queue that no worker polls, and
terminates it at once: nothing runs, no memory is written, and the server alone decides whether the
input is accepted. A search over ``n`` finds the largest batch that starts and the smallest that does
not, with the server's own error text.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.common import RawValue
from temporalio.converter import DataConverter
from temporalio.service import RPCError

from toolkit.api.legacy_limit import TEMPORAL_PAYLOAD_LIMIT_BYTES
from toolkit.settings import Settings
from toolkit.temporal.batch_types import BatchContext, LegacyBatchInput
from toolkit.temporal.client import connect
from toolkit.temporal.workflows import LEGACY_WORKFLOW
from toolkit.validation.workloads import make_memories

__all__ = ["LegacyFailurePoint", "find_legacy_failure_point", "legacy_input_payload_bytes"]


@dataclass(frozen=True)
class Probe:
    memories: int
    input_bytes: int
    started: bool
    error: str | None
    workflow_id: str


@dataclass(frozen=True)
class LegacyFailurePoint:
    """What the bisection found. ``smallest_failing`` is None if even ``max_memories`` started."""

    workload: str
    largest_ok: int
    smallest_failing: int | None
    ok_input_bytes: int
    failing_input_bytes: int | None
    error: str | None  # the server's own text for the smallest failing batch
    probes: list[Probe] = field(default_factory=list)

    def probes_frame(self) -> pd.DataFrame:
        return pd.DataFrame([p.__dict__ for p in self.probes]).sort_values("memories").reset_index(drop=True)


def _input(memories: Sequence[dict], probe_id: str) -> LegacyBatchInput:
    context = BatchContext(request_id=probe_id[:10], batch_id=probe_id, user_id=probe_id[:10])
    return LegacyBatchInput(context=context, memories=list(memories))


def _payload(memories: Sequence[dict]) -> Payload:
    return DataConverter.default.payload_converter.to_payloads([_input(memories, uuid.uuid4().hex)])[0]


def legacy_input_payload_bytes(memories: Sequence[dict]) -> int:
    """Bytes of the legacy workflow input payload as the SDK's default converter serializes it."""
    return len(_payload(memories).data)


async def _probe(temporal: Client, memories: Sequence[dict], task_queue: str) -> Probe:
    # Serialized once and sent as is (RawValue): a 2 MB input takes seconds to convert on a busy box.
    payload = await asyncio.to_thread(_payload, memories)
    workflow_id = f"legacy-limit-probe-{uuid.uuid4().hex}"
    try:
        handle = await temporal.start_workflow(
            LEGACY_WORKFLOW,
            RawValue(payload),
            id=workflow_id,
            task_queue=task_queue,
        )
    except RPCError as exc:
        return Probe(len(memories), len(payload.data), False, str(exc), workflow_id)
    # Started: stop it before anything could pick it up (nothing polls this queue anyway).
    await handle.terminate(reason="legacy limit probe: only the start was being measured")
    return Probe(len(memories), len(payload.data), True, None, workflow_id)


def _largest_under(memories: Sequence[dict], limit_bytes: int) -> int:
    """About the largest n whose legacy input stays within ``limit_bytes``: a guess of where to look.

    Serializing a 2 MB input takes a while, so sizes are added up memory by memory (each as the
    converter writes it, plus its comma) over the exact size of a one-memory input.
    """
    if not memories:
        return 0
    total = legacy_input_payload_bytes(memories[:1])
    for n, memory in enumerate(memories[1:], start=1):
        total += 1 + len(json.dumps(memory, separators=(",", ":"), sort_keys=True).encode())
        if total > limit_bytes:
            return n
    return len(memories)


async def find_legacy_failure_point(
    settings: Settings,
    *,
    workload: str = "chitchat",
    max_memories: int = 20_000,
    expected_limit_bytes: int = TEMPORAL_PAYLOAD_LIMIT_BYTES,
    temporal: Client | None = None,
    **workload_options: int,
) -> LegacyFailurePoint:
    """Find, by starting real legacy workflows, the smallest batch the server refuses.

    Only the server's answers decide. ``expected_limit_bytes`` (Temporal's documented 2 MiB) only
    says where to look first: the search starts at the largest batch whose input fits it and probes
    that size and the next; if the server disagrees it gallops outwards and bisects (about
    2·log2(distance) more starts). A probe of a ~2 MB start takes seconds, so guessing well matters.
    """
    if max_memories < 1:
        raise ValueError(f"max_memories must be >= 1, got {max_memories}")
    temporal = temporal or await connect(settings)
    memories = make_memories(workload, max_memories, **workload_options)
    queue = f"legacy-limit-probe-{uuid.uuid4().hex[:8]}"  # polled by no worker
    probes: dict[int, Probe] = {}

    async def started(n: int) -> bool:
        if n not in probes:
            probes[n] = await _probe(temporal, memories[:n], queue)
        return probes[n].started

    guess = max(1, _largest_under(memories, expected_limit_bytes))
    ok: int | None = None
    failing: int | None = None
    if await started(guess):
        ok, step = guess, 1
        while failing is None:  # gallop up until refused or out of memories
            n = min(ok + step, max_memories)
            if await started(n):
                ok = n
                if n == max_memories:
                    break
            else:
                failing = n
            step *= 2
    else:
        failing, step = guess, 1
        while ok is None:  # gallop down until accepted
            n = max(failing - step, 1)
            if await started(n):
                ok = n
            elif n == 1:
                raise RuntimeError(f"a one-memory legacy start was refused: {probes[1].error}")
            else:
                failing = n
            step *= 2
    if failing is None:
        return LegacyFailurePoint(
            workload, ok, None, probes[ok].input_bytes, None, None, list(probes.values())
        )
    while failing - ok > 1:
        middle = (ok + failing) // 2
        if await started(middle):
            ok = middle
        else:
            failing = middle
    return LegacyFailurePoint(
        workload,
        ok,
        failing,
        probes[ok].input_bytes,
        probes[failing].input_bytes,
        probes[failing].error,
        list(probes.values()),
    )
