"""``toolkit worker``: one process serving both batch workflows and all their activities.

Scale out by running more of them on the same task queue; Temporal spreads the work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from toolkit.parse import ParseClient
from toolkit.ports import free_port, port_in_use
from toolkit.settings import Settings
from toolkit.temporal.activities import BatchActivities
from toolkit.temporal.client import connect
from toolkit.temporal.payload_metrics import PayloadMetricsInterceptor, bucket_overrides
from toolkit.temporal.workflows import ProcessBatchMemoryFromRequestWorkflow, ProcessBatchMemoryWorkflow

log = logging.getLogger(__name__)


def build_worker(
    client: Client,
    settings: Settings,
    parse: ParseClient,
    *,
    task_queue: str | None = None,
    activities: BatchActivities | None = None,
) -> Worker:
    """A worker for both workflows; ``activities`` replaces the default set built on ``parse``."""
    activities = activities or BatchActivities(settings, parse)
    return Worker(
        client,
        task_queue=task_queue or settings.temporal_task_queue,
        workflows=[ProcessBatchMemoryFromRequestWorkflow, ProcessBatchMemoryWorkflow],
        activities=activities.all(),
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        # temporal_payload_size_bytes on the worker's /metrics, and a warning once per run past 512 KiB.
        interceptors=[PayloadMetricsInterceptor()],
        # The SDK otherwise sends heartbeats only every 0.8 x heartbeat_timeout (16 s here), so a retry
        # would resume from a checkpoint that old. One a second keeps the resume point fresh.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        # On shutdown, running activities get this long to finish; the SDK then cancels them, and a
        # cancelled attempt fails as "WorkerShutdown", which Temporal retries at once from the last
        # heartbeated checkpoint (not after the heartbeat timeout, as for a worker that died).
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_graceful_shutdown_s),
    )


def install_metrics_runtime(settings: Settings) -> str | None:
    """Export the Temporal SDK's metrics (task latencies, slots, polls, failures, payload sizes).

    With ``WORKER_METRICS_PORT`` set, the SDK's runtime serves them at
    ``http://<BIND_HOST>:<port>/metrics``. It must become the default runtime before the client
    connects: the client and every worker built on it report through the runtime they were made on.
    Returns the metrics URL, or None when the port is 0 (off).
    """
    if settings.worker_metrics_port <= 0:
        return None
    port = settings.worker_metrics_port
    if port_in_use(settings.bind_host, port):
        # Scaling out = more workers on one host, all reading the same stack.env: the first one has the
        # configured port, the others serve their metrics on a free port and say where.
        port = free_port(settings.bind_host)
        log.warning(
            "WORKER_METRICS_PORT %d is taken (another worker?); metrics on port %d",
            settings.worker_metrics_port,
            port,
        )
    bind = f"{settings.bind_host}:{port}"
    prometheus = PrometheusConfig(bind_address=bind, histogram_bucket_overrides=bucket_overrides())
    runtime = Runtime(telemetry=TelemetryConfig(metrics=prometheus))
    Runtime.set_default(runtime, error_if_already_set=True)
    return f"http://{bind}/metrics"


async def run_worker(settings: Settings, *, ready_file: Path | None = None) -> None:
    metrics_url = install_metrics_runtime(settings)
    if metrics_url:
        log.info("worker metrics at %s", metrics_url)
    client = await connect(settings)
    # SIGTERM (a deploy, `toolkit stack down`) and SIGINT stop the worker gracefully: leaving the
    # `async with` below shuts it down, and the shutdown drains or hands back the running activities.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with ParseClient(settings) as parse:
        worker = build_worker(client, settings, parse)
        log.info("worker on %s, task queue %s", settings.temporal_target, settings.temporal_task_queue)
        async with worker:
            if ready_file is not None:
                ready_file.write_text(f"{os.getpid()}\n")
            await stop.wait()
            log.info(
                "shutting down: no new tasks; running activities get %g s to finish, then are handed back",
                settings.worker_graceful_shutdown_s,
            )
        log.info("worker stopped")
