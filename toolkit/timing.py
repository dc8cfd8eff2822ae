"""Where one request's time goes: named spans collected per task, reported as ``Server-Timing``.

The API opens a :class:`Timings` for each request (a context variable, so concurrent requests never
mix); the code it calls marks its round trips with :func:`span`. Outside a request ``span`` costs one
context-variable read and records nothing. The header (``name;dur=<ms>``, W3C Server Timing) carries
names, durations and, for a name timed more than once, how often (``;count=<n>``): no ids, no content.
The counts let a client tell how many round trips a request made (``toolkit saturation`` sums them).
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
    """Milliseconds per span name (repeats add up, and are counted), in the order the names first appeared."""

    started: float = field(default_factory=time.perf_counter)
    spans: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, ms: float) -> None:
        self.spans[name] = self.spans.get(name, 0.0) + ms
        self.counts[name] = self.counts.get(name, 0) + 1

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def header(self) -> str:
        parts = []
        for name, ms in self.spans.items():
            count = self.counts.get(name, 1)
            parts.append(f"{_TOKEN.sub('_', name)};dur={ms:.2f}" + (f";count={count}" if count > 1 else ""))
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


def _entries(value: str) -> Iterator[tuple[str, dict[str, str]]]:
    for entry in value.split(","):
        name, _, params = entry.strip().partition(";")
        if name:
            yield name, dict(param.strip().partition("=")[::2] for param in params.split(";") if param)


def parse_header(value: str) -> dict[str, float]:
    """``"a;dur=1.5, total;dur=3"`` → ``{"a": 1.5, "total": 3.0}`` (entries without ``dur`` are skipped)."""
    result: dict[str, float] = {}
    for name, params in _entries(value):
        if "dur" in params:
            result[name] = result.get(name, 0.0) + float(params["dur"])
    return result


def parse_counts(value: str) -> dict[str, int]:
    """How often each span ran: ``"a;dur=1.5;count=3, b;dur=2"`` → ``{"a": 3, "b": 1}`` (not ``total``)."""
    result: dict[str, int] = {}
    for name, params in _entries(value):
        if "dur" in params and name != TOTAL:
            result[name] = result.get(name, 0) + int(params.get("count", "1"))
    return result
