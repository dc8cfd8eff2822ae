"""Where a running process spends its CPU, by function: py-spy samples, summed.

py-spy (PyPI, in the ``test`` extra) samples a process from outside through ``ptrace``: nothing in the target
changes, and with ``--nonblocking`` it never pauses it. Threads waiting in a system call (an event loop
in ``epoll``) are left out, so the samples are of running Python code: CPU time, not wall time. Code outside
Python's frames (the Temporal SDK's Rust core, C extensions called from Python are inside their caller's
frame) is not seen as its own entry.

:func:`profiling` records every named pid while its block runs (py-spy's messages in a file beside each
record); :func:`summarize` reads a record (py-spy's ``raw`` format: one ``frame;frame;…;frame count`` line
per distinct stack, outermost frame first).
Samples whose top frame is a wait (:data:`WAITING_FRAMES`) are counted apart: they are not CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_RATE_HZ = 100
# Top frames that mean "waiting", not running: on a loaded machine py-spy's own idle check (the thread's
# state at the sampling instant) lets some through. An event loop in epoll, a thread pool's idle thread.
WAITING_FRAMES = (
    "EpollSelector.select ",
    "PollSelector.select ",
    "KqueueSelector.select ",
    "SelectSelector.select ",
    "_worker (concurrent/futures/thread.py",
    "Condition.wait ",
)
STOP_TIMEOUT_S = 30.0


class ProfilerUnavailable(Exception):
    """py-spy is not installed."""


@dataclass(frozen=True)
class FunctionShare:
    function: str  # as py-spy names it: "name (file.py:first line)"
    self_share: float  # share of the samples with this function on top (running its own code)
    total_share: float  # share of the samples with it anywhere on the stack (it or what it called)


@dataclass(frozen=True)
class Profile:
    label: str
    samples: int  # samples of running code (waiting ones left out)
    waiting: int  # samples whose top frame was a wait (see WAITING_FRAMES)
    functions: list[FunctionShare]  # by self share, highest first
    toolkit: list[FunctionShare]  # this package's functions by total share: which of our calls cost what
    packages: list[tuple[str, float]]  # self share by top-level package or module, highest first


def py_spy() -> str:
    candidate = Path(sys.executable).parent / "py-spy"
    found = str(candidate) if candidate.exists() else shutil.which("py-spy")
    if not found:
        raise ProfilerUnavailable("py-spy not found: install the test extra (pip install -e '.[test]')")
    return found


@dataclass
class Recording:
    """What :func:`profiling` recorded: a record file per label, and why a label has none."""

    files: dict[str, Path]  # label → py-spy's record (written when the block exits)
    # label → py-spy's last words, for each label whose record is missing
    problems: dict[str, str] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def profiling(
    pids: Mapping[str, int], out_dir: Path, *, rate_hz: int = SAMPLE_RATE_HZ
) -> AsyncIterator[Recording]:
    """Sample each ``label → pid`` while the block runs; yields the :class:`Recording`, complete at exit.

    py-spy's messages go to ``<label>.stderr.txt`` beside each record. A record py-spy could not write
    (the process gone, ptrace refused) is a problem of the recording, not an error: the measurement the
    block made is kept, and an error the block raised is never replaced by one of the profiler's.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = py_spy()
    recording = Recording({label: out_dir / f"{label}.txt" for label in pids})
    recorders: dict[str, asyncio.subprocess.Process] = {}
    try:
        for label, pid in pids.items():
            with open(out_dir / f"{label}.stderr.txt", "wb") as stderr:  # the child keeps its own handle
                recorders[label] = await asyncio.create_subprocess_exec(
                    binary,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--function",
                    "--nonblocking",
                    "--rate",
                    str(rate_hz),
                    "--output",
                    str(recording.files[label]),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=stderr,
                )
        yield recording
    finally:
        await asyncio.gather(*(_stop(recorder) for recorder in recorders.values()))
        for label in recorders:
            if not recording.files[label].exists():
                said = _error_line((out_dir / f"{label}.stderr.txt").read_text(errors="replace"))
                recording.problems[label] = said or f"py-spy exited {recorders[label].returncode}"


def _error_line(stderr: str) -> str:
    """py-spy's ``Error: …`` line (a backtrace may follow it), else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    return (errors[0] if errors else lines[-1] if lines else "")[:300]


async def _stop(recorder: asyncio.subprocess.Process) -> None:
    """Ctrl-C (py-spy writes its record then), and kill if it has not exited within STOP_TIMEOUT_S."""
    if recorder.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            recorder.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(recorder.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            recorder.kill()
        await recorder.wait()


def _package(frame: str) -> str:
    """``"f (starlette/routing.py:10)"`` → ``starlette``; ``toolkit`` keeps its part (``toolkit.api``)."""
    location = frame.rpartition(" (")[2].rstrip(")").rpartition(":")[0]
    parts = location.removesuffix(".py").split("/")
    if parts[0] == "toolkit" and len(parts) > 2:
        return ".".join(parts[:2])
    return parts[0] or "?"


def _stacks(record: Path) -> Iterator[tuple[list[str], int]]:
    """(frames outermost first, samples) for each line of a py-spy ``raw`` record."""
    for line in record.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def _is_waiting(frame: str) -> bool:
    return frame.startswith(WAITING_FRAMES)


def summarize(record: Path, label: str, *, top: int = 15) -> Profile:
    """The ``top`` functions by self share, our own by total share, and every package's self share."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = waiting = 0
    for frames, count in _stacks(record):
        if _is_waiting(frames[-1]):
            waiting += count
            continue
        total += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for frame in set(frames):
            anywhere[frame] += count
    if total == 0:
        return Profile(label, 0, waiting, [], [], [])

    def share(name: str) -> FunctionShare:
        return FunctionShare(name, own[name] / total, anywhere[name] / total)

    # The package's own functions, the command line that started the process left out (it holds everything).
    ours = sorted(
        (
            name
            for name in anywhere
            if _package(name).startswith("toolkit.") and _package(name) != "toolkit.cli"
        ),
        key=anywhere.__getitem__,
        reverse=True,
    )
    return Profile(
        label,
        total,
        waiting,
        [share(name) for name, _ in own.most_common(top)],
        [share(name) for name in ours[:top]],
        [(name, n / total) for name, n in packages.most_common()],
    )


def format_profile(profile: Profile, *, packages: int = 8) -> list[str]:
    lines = [
        f"-- {profile.label}: {profile.samples} samples of running code "
        f"({profile.waiting} waiting, left out); self share / total share"
    ]
    lines += [f"   {f.self_share:6.1%} {f.total_share:6.1%}  {f.function}" for f in profile.functions]
    lines.append("   this package's functions, by total share:")
    lines += [f"   {f.self_share:6.1%} {f.total_share:6.1%}  {f.function}" for f in profile.toolkit]
    shares = ", ".join(f"{name} {share:.0%}" for name, share in profile.packages[:packages])
    lines.append(f"   by package (self): {shares}")
    return lines
