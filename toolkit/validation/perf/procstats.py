"""Peak memory and CPU time of the stack's processes, read from ``/proc`` (Linux).

Pids come from ``<stack dir>/pids/<part>.pid`` (``worker*.pid`` for every worker). A part counts with
its live descendants: Parse's pid may be a launcher whose child is the real ``node``, and PostgreSQL's
work happens in backends forked by the postmaster. A measuring process that started the processes it
measures (variants) is sampled ``alone``, or it would count them twice. Where ``/proc`` is missing,
values are None.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Writing "5" to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux ≥ 4.0).
_RESET_PEAK = b"5"


@dataclass(frozen=True)
class ProcSample:
    part: str
    pid: int
    cpu_s: float  # user + system, the process and its live descendants (and reaped children)
    rss_kb: int
    peak_rss_kb: int  # VmHWM of the process itself


def stack_pids(stack_dir: Path) -> dict[str, int]:
    """Part name → pid of every pid file under ``<stack dir>/pids`` whose process is alive."""
    pids: dict[str, int] = {}
    for pid_file in sorted((stack_dir / "pids").glob("*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{pid}").exists():
            pids[pid_file.stem] = pid
    return pids


def worker_count(stack_dir: Path) -> int:
    return sum(1 for part in stack_pids(stack_dir) if part.startswith("worker"))


def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_kb(pid: int) -> int | None:
    return _status_kb(pid, "VmHWM")


def reset_peak_rss(pid: int) -> bool:
    """Start a new peak window for ``pid``; False where the kernel or permissions refuse."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_bytes(_RESET_PEAK)
    except OSError:
        return False
    return True


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU seconds, reaped children's CPU seconds) from ``/proc/<pid>/stat``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return ppid, (utime + stime) / _TICKS, (cutime + cstime) / _TICKS


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                tree.setdefault(stat[0], []).append(int(entry.name))
    return tree


def cpu_seconds(pid: int, tree: dict[int, list[int]] | None = None, *, alone: bool = False) -> float | None:
    """CPU seconds of ``pid`` and all its descendants (live, and reaped); ``alone``: its own threads only."""
    own = _stat(pid)
    if own is None:
        return None
    if alone:
        return own[1]
    tree = _children() if tree is None else tree
    total, stack = own[1] + own[2], list(tree.get(pid, []))
    while stack:
        child = stack.pop()
        stat = _stat(child)
        if stat is not None:
            total += stat[1] + stat[2]
        stack.extend(tree.get(child, []))
    return total


def sample(pids: dict[str, int], *, alone: Collection[str] = ()) -> list[ProcSample]:
    """One reading per live part; the parts named in ``alone`` by their own threads only."""
    tree = _children()
    samples = []
    for part, pid in pids.items():
        cpu = cpu_seconds(pid, tree, alone=part in alone)
        if cpu is None:
            continue
        samples.append(ProcSample(part, pid, cpu, _status_kb(pid, "VmRSS") or 0, peak_rss_kb(pid) or 0))
    return samples


def cpu_delta(before: list[ProcSample], after: list[ProcSample]) -> dict[str, float]:
    """CPU seconds each part used between two samples (parts present in both)."""
    start = {s.part: s.cpu_s for s in before}
    return {s.part: s.cpu_s - start[s.part] for s in after if s.part in start}


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, all cores, from ``/proc/stat``."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values) - idle) / _TICKS, sum(values) / _TICKS
