"""Where one request's time goes: named spans collected per task, reported as ``Server-Timing``.

The API opens a :class:`Timings` for each request (a context variable, so concurrent requests never
mix); the code it calls marks its round trips with :func:`span`. Outside a request ``span`` costs one
context-variable read and records nothing. The header (``name;dur=<ms>``, W3C Server Timing) carries
names and durations only: no ids, no content.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

HEADER = "Server-Timing"
# The whole request as the server saw it; the named spans are parts of it.
TOTAL = "total"
_TOKEN = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class Timings:
    """Milliseconds per span name (repeats add up), in the order the names first appeared."""

    started: float = field(default_factory=time.perf_counter)
    spans: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, ms: float) -> None:
        self.spans[name] = self.spans.get(name, 0.0) + ms

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def header(self) -> str:
        parts = [f"{_TOKEN.sub('_', name)};dur={ms:.2f}" for name, ms in self.spans.items()]
        parts.append(f"{TOTAL};dur={self.elapsed_ms():.2f}")
        return ", ".join(parts)


_current: ContextVar[Timings | None] = ContextVar("toolkit_timings", default=None)


@contextmanager
def collect() -> Iterator[Timings]:
    """Collect the spans of the code run inside this block (and the tasks it starts)."""
    timings = Timings()
    token = _current.set(timings)
    try:
        yield timings
    finally:
        _current.reset(token)


@contextmanager
def span(name: str) -> Iterator[None]:
    """Time the block under ``name`` if a :func:`collect` is active; otherwise do nothing."""
    timings = _current.get()
    if timings is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        timings.add(name, (time.perf_counter() - started) * 1000)


def parse_header(value: str) -> dict[str, float]:
    """``"a;dur=1.5, total;dur=3"`` → ``{"a": 1.5, "total": 3.0}`` (entries without ``dur`` are skipped)."""
    result: dict[str, float] = {}
    for entry in value.split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, raw = param.strip().partition("=")
            if key == "dur" and name:
                result[name] = result.get(name, 0.0) + float(raw)
    return result
