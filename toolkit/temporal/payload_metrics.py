"""Payload-size metrics for any temporalio worker: a histogram, and a warning once per run.

Install it in one line, on the client the workers are built on or on one worker::

    client = await Client.connect(address, interceptors=[PayloadMetricsInterceptor()])
    # or: Worker(client, task_queue=..., workflows=[...], interceptors=[PayloadMetricsInterceptor()])

What it records, from inside each workflow (the payloads a workflow's history holds):

- ``temporal_payload_size_bytes``, a histogram through the SDK's metric meter, so it reaches whatever the
  worker's ``Runtime`` exports (Prometheus, OpenTelemetry). Labels: ``workflow_type`` (with the SDK's
  ``namespace`` and ``task_queue``), ``activity_type`` (empty for the workflow's own payloads) and
  ``direction``: ``input`` (workflow or activity arguments), ``output`` (workflow or activity result) or
  ``signal`` (signal arguments). One observation per payload set the history keeps: a workflow's input and
  result, each scheduled activity's input and each completed activity's result (local activities too), each
  signal. Nothing during replay: the workflow meter drops replayed records.
- One ``WARNING`` per workflow run, through ``workflow.logger``, the first time a payload reaches
  ``payload_warn_bytes`` and the first time the history reaches ``history_warn_bytes`` or
  ``history_warn_events``. Never on replay: the state is rebuilt while replaying (the replayed part of the
  history already passed the threshold, so a worker that picks the run up after a cache eviction or a
  restart stays quiet), and only a live crossing is logged. The message names sizes and types, never content.

A size is the serialized ``Payloads`` message as the server checks it against its blob limit (data plus
metadata), produced by the workflow's payload converter: before a payload codec (encryption, compression)
or external storage changes it. The values are serialized a second time to measure them; for the payload
sets named above that is one extra ``to_payloads`` per set.

Buckets: the SDK's default histogram buckets are for milliseconds. Give the runtime byte buckets with
``PrometheusConfig(..., histogram_bucket_overrides=bucket_overrides())``.

This module depends on nothing else of the toolkit: copy it into another worker as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import temporalio.client
import temporalio.worker
from temporalio import workflow
from temporalio.api.common.v1 import Payloads
from temporalio.common import MetricHistogram

__all__ = [
    "DIRECTIONS",
    "PAYLOAD_SIZE_BUCKETS",
    "PAYLOAD_SIZE_METRIC",
    "PayloadMetricsInterceptor",
    "PayloadWarnings",
    "bucket_overrides",
    "payloads_size",
]

PAYLOAD_SIZE_METRIC = "temporal_payload_size_bytes"
DIRECTIONS = ("input", "output", "signal")
_KIB = 1024
_MIB = 1024 * _KIB
# Up to Temporal's limits: the SDK's 512 KiB warning, the 2 MiB blob limit, the 4 MiB gRPC message.
PAYLOAD_SIZE_BUCKETS: tuple[float, ...] = (
    256,
    1 * _KIB,
    4 * _KIB,
    16 * _KIB,
    64 * _KIB,
    256 * _KIB,
    512 * _KIB,
    1 * _MIB,
    2 * _MIB,
    4 * _MIB,
)


def bucket_overrides() -> dict[str, list[float]]:
    """Byte buckets for the histogram, for ``PrometheusConfig(histogram_bucket_overrides=...)``."""
    return {PAYLOAD_SIZE_METRIC: list(PAYLOAD_SIZE_BUCKETS)}


@dataclass(frozen=True)
class PayloadWarnings:
    """When a run logs its warning. Defaults: the SDK's payload warning and the server's history warning."""

    payload_warn_bytes: int = 512 * _KIB
    history_warn_bytes: int = 10 * _MIB
    history_warn_events: int = 10_240


def payloads_size(values: Sequence[Any]) -> int:
    """Bytes of ``values`` serialized by the current workflow's payload converter, as one ``Payloads``."""
    return Payloads(payloads=workflow.payload_converter().to_payloads(values)).ByteSize()


class PayloadMetricsInterceptor(temporalio.client.Interceptor, temporalio.worker.Interceptor):
    """Records payload sizes inside every workflow of the worker (see the module's docstring).

    A client interceptor too, only so that installing it on a client installs it on every worker built on
    that client; client calls pass through untouched (a payload is measured once, in its workflow).
    """

    def __init__(self, warnings: PayloadWarnings | None = None) -> None:
        settings = warnings or PayloadWarnings()

        class _Inbound(_PayloadSizeInbound):
            thresholds = settings

        self._inbound_class = _Inbound

    def workflow_interceptor_class(
        self, input: temporalio.worker.WorkflowInterceptorClassInput
    ) -> type[temporalio.worker.WorkflowInboundInterceptor]:
        return self._inbound_class


class _RunWatch:
    """One workflow run's measurements: records sizes, and warns once per threshold kind."""

    def __init__(self, thresholds: PayloadWarnings) -> None:
        self._thresholds = thresholds
        self._histogram: MetricHistogram | None = None
        self._payload_passed = False
        self._history_passed = False

    def payloads(self, values: Sequence[Any], *, activity_type: str, direction: str) -> None:
        try:
            size = payloads_size(values)
        except Exception:  # a measurement must never fail the workflow task it watches
            return
        if self._histogram is None:
            self._histogram = workflow.metric_meter().create_histogram(
                PAYLOAD_SIZE_METRIC, "Serialized payload sets of workflows and activities", "bytes"
            )
        # The workflow meter drops records made while replaying: each payload is counted once, live.
        self._histogram.with_additional_attributes(
            {"activity_type": activity_type, "direction": direction}
        ).record(size)
        if size >= self._thresholds.payload_warn_bytes and not self._payload_passed:
            self._payload_passed = True
            what = f"activity {activity_type!r} {direction}" if activity_type else f"workflow {direction}"
            self._warn(
                f"payload of {size:,} bytes ({what}) reached the warning threshold of "
                f"{self._thresholds.payload_warn_bytes:,} bytes"
            )
        self.history()

    def history(self) -> None:
        if self._history_passed:
            return
        info = workflow.info()
        size, length = info.get_current_history_size(), info.get_current_history_length()
        if size >= self._thresholds.history_warn_bytes or length >= self._thresholds.history_warn_events:
            self._history_passed = True
            self._warn(
                f"history of {size:,} bytes and {length:,} events reached the warning threshold of "
                f"{self._thresholds.history_warn_bytes:,} bytes or {self._thresholds.history_warn_events:,} "
                "events"
            )

    @staticmethod
    def _warn(message: str) -> None:
        # The state above is kept while replaying, so a crossing already in the history is not logged again.
        if not workflow.unsafe.is_replaying():
            workflow.logger.warning(message)

    def activity_done(self, activity_type: str, task: asyncio.Future[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        self.payloads([task.result()], activity_type=activity_type, direction="output")


class _PayloadSizeInbound(temporalio.worker.WorkflowInboundInterceptor):
    thresholds = PayloadWarnings()

    def init(self, outbound: temporalio.worker.WorkflowOutboundInterceptor) -> None:
        self._watch = _RunWatch(self.thresholds)
        super().init(_PayloadSizeOutbound(outbound, self._watch))

    async def execute_workflow(self, input: temporalio.worker.ExecuteWorkflowInput) -> Any:
        self._watch.payloads(input.args, activity_type="", direction="input")
        result = await super().execute_workflow(input)
        self._watch.payloads([result], activity_type="", direction="output")
        return result

    async def handle_signal(self, input: temporalio.worker.HandleSignalInput) -> None:
        self._watch.payloads(input.args, activity_type="", direction="signal")
        await super().handle_signal(input)


class _PayloadSizeOutbound(temporalio.worker.WorkflowOutboundInterceptor):
    def __init__(self, next: temporalio.worker.WorkflowOutboundInterceptor, watch: _RunWatch) -> None:
        super().__init__(next)
        self._watch = watch

    def start_activity(self, input: temporalio.worker.StartActivityInput) -> workflow.ActivityHandle[Any]:
        self._watch.payloads(input.args, activity_type=input.activity, direction="input")
        handle = super().start_activity(input)
        handle.add_done_callback(lambda task: self._watch.activity_done(input.activity, task))
        return handle

    def start_local_activity(
        self, input: temporalio.worker.StartLocalActivityInput
    ) -> workflow.ActivityHandle[Any]:
        self._watch.payloads(input.args, activity_type=input.activity, direction="input")
        handle = super().start_local_activity(input)
        handle.add_done_callback(lambda task: self._watch.activity_done(input.activity, task))
        return handle

    async def start_child_workflow(
        self, input: temporalio.worker.StartChildWorkflowInput
    ) -> workflow.ChildWorkflowHandle[Any, Any]:
        # The child measures its own input; here only the history the command adds to is checked.
        self._watch.history()
        return await super().start_child_workflow(input)
