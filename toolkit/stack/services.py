"""The toolkit's own processes in the stack: the API (uvicorn) and a Temporal worker."""

from __future__ import annotations

import os
import sys

import httpx

from toolkit.settings import Settings
from toolkit.stack._process import StackError, port_in_use, read_pid, spawn, wait_until


def _child_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "TOOLKIT_STACK_DIR": str(settings.stack_dir), "PYTHONUNBUFFERED": "1"}


class ApiServer:
    name = "api"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log_file = settings.stack_dir / "logs" / "api.log"
        self.pid_file = settings.stack_dir / "pids" / "api.pid"
        self.host = settings.bind_host
        self.port = settings.api_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> None:
        if port_in_use(self.host, self.port):
            raise StackError(
                f"api: port {self.port} on {self.host} is already in use by another process; "
                "set API_PORT to choose another"
            )
        pid = spawn(
            [sys.executable, "-m", "toolkit", "api", "--host", self.host, "--port", str(self.port)],
            log_file=self.log_file,
            pid_file=self.pid_file,
            env=_child_env(self.settings),
        )
        wait_until(self.healthy, timeout_s=60, part=self.name, log_file=self.log_file, pid=pid)


class Worker:
    """A worker is healthy once it has written its ready file (after connecting to Temporal)."""

    name = "worker"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log_file = settings.stack_dir / "logs" / "worker.log"
        self.pid_file = settings.stack_dir / "pids" / "worker.pid"
        self.ready_file = settings.stack_dir / "run" / "worker.ready"

    @property
    def url(self) -> str:
        return f"task queue {self.settings.temporal_task_queue}"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def healthy(self) -> bool:
        pid = self.pid()
        try:
            return pid is not None and int(self.ready_file.read_text().strip()) == pid
        except (OSError, ValueError):
            return False

    def start(self) -> None:
        self.ready_file.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        pid = spawn(
            [sys.executable, "-m", "toolkit", "worker", "--ready-file", str(self.ready_file)],
            log_file=self.log_file,
            pid_file=self.pid_file,
            env=_child_env(self.settings),
        )
        wait_until(self.healthy, timeout_s=60, part=self.name, log_file=self.log_file, pid=pid)
