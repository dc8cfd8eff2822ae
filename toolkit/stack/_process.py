"""Process plumbing for the local stack: pid files, spawning, stopping, ports, waiting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import httpx

if TYPE_CHECKING:
    from toolkit.settings import Settings


class StackError(Exception):
    """A part of the stack could not be started, checked or stopped. The message names the part."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still answers kill(0); it is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in ``pid_file`` if that process still runs; a stale file is removed."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return None
    if pid_alive(pid):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def spawn(
    argv: Sequence[str],
    *,
    log_file: Path,
    pid_file: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start ``argv`` detached in its own session (so the whole group can be signalled) and record its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def stop_pid(pid: int, *, grace_s: float = 10.0, first_signal: int = signal.SIGTERM) -> None:
    """Signal the process (and its group when it leads one), wait, then SIGKILL after the grace period."""

    def send(sig: int) -> None:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    send(first_signal)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    send(signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    raise StackError(f"process {pid} did not stop after SIGKILL")


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_until(
    check: Callable[[], bool],
    *,
    timeout_s: float,
    part: str,
    log_file: Path,
    pid: int | None = None,
    interval_s: float = 0.25,
) -> None:
    """Poll ``check`` until it is true; fail naming the part and its log when it dies or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None:
            _reap(pid)
            if not pid_alive(pid):
                raise StackError(f"{part} exited during start-up; see {log_file}\n{tail(log_file)}")
        time.sleep(interval_s)
    raise StackError(f"{part} not healthy after {timeout_s:.0f}s; see {log_file}\n{tail(log_file)}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_ok(url: str, predicate: Callable[[httpx.Response], bool] | None = None) -> bool:
    """True when ``url`` answers 2xx (and ``predicate`` accepts the response) within 2 s."""
    try:
        response = httpx.get(url, timeout=2.0)
    except httpx.HTTPError:
        return False
    return response.is_success and (predicate is None or predicate(response))


class StackPart:
    """What every part of the stack shares: its pid file, its log, and a refusal of taken ports."""

    name: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host = settings.bind_host
        self.log_file = settings.stack_dir / "logs" / f"{self.name}.log"
        self.pid_file = settings.stack_dir / "pids" / f"{self.name}.pid"

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def metrics_url(self) -> str | None:
        """Where Prometheus scrapes this part; None for parts that export no metrics."""
        return None

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def healthy(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def refuse_taken_ports(self, ports: Mapping[str, int]) -> None:
        """``ports`` maps the variable that sets a port to the port; fail naming both when one is taken."""
        for variable, port in ports.items():
            if port_in_use(self.host, port):
                raise StackError(
                    f"{self.name}: port {port} on {self.host} is already in use by another process; "
                    f"set {variable} to choose another"
                )
