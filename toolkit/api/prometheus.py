"""Operator metrics of one API process, served at ``GET /metrics`` in Prometheus' text format.

- ``batch_api_requests_total{route,method,status}`` and ``batch_api_request_duration_seconds{route,method}``:
  every request, labelled by its route template (``/v1/batch/{batch_id}/status``), never the raw
  path, so a scan of random URLs cannot blow up the number of series (unmatched paths are "unmatched").
- ``batch_api_error_responses_total{class}``: 4xx and 5xx answers.
- ``batch_api_batches_accepted_total{storage}`` and ``batch_api_memories_accepted_total{storage}``:
  new batches accepted (202, replays excluded) by path, ``reference`` or ``legacy``.

Each app has its own registry (no process-global state), so several apps in one process never mix.
The middleware is plain ASGI: it never touches the request body, which the submit route streams.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Latency buckets (seconds): a status read is ~10 ms, a 10,000-memory submit about a second.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "unmatched"


class ApiMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "batch_api_requests",
            "HTTP requests answered, by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "batch_api_request_duration_seconds",
            "Time from receiving a request to the end of its answer",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "batch_api_error_responses",
            "Answers with a 4xx or 5xx status",
            ["class"],
            registry=self.registry,
        )
        self.batches_accepted = Counter(
            "batch_api_batches_accepted",
            "New batches accepted (202, idempotent replays excluded), by storage path",
            ["storage"],
            registry=self.registry,
        )
        self.memories_accepted = Counter(
            "batch_api_memories_accepted",
            "Memories in the batches accepted, by storage path",
            ["storage"],
            registry=self.registry,
        )

    def batch_accepted(self, storage: str, memories: int) -> None:
        self.batches_accepted.labels(storage).inc()
        self.memories_accepted.labels(storage).inc(memories)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)
        if status >= 400:
            self.errors.labels(f"{status // 100}xx").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _route_of(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Times and counts every HTTP request by the route that served it."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self.metrics.observe(_route_of(scope), scope["method"], status, time.perf_counter() - started)
