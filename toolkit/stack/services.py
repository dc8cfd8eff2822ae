"""The toolkit's own processes in the stack: the API (uvicorn) and a Temporal worker."""

from __future__ import annotations

import os
import sys

from toolkit.settings import Settings
from toolkit.stack._process import StackPart, http_ok, spawn, wait_until


def _child_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "TOOLKIT_STACK_DIR": str(settings.stack_dir), "PYTHONUNBUFFERED": "1"}


class ApiServer(StackPart):
    name = "api"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.port = settings.api_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/healthz")

    def start(self) -> None:
        self.refuse_taken_ports({"API_PORT": self.port})
        pid = spawn(
            [sys.executable, "-m", "toolkit", "api", "--host", self.host, "--port", str(self.port)],
            log_file=self.log_file,
            pid_file=self.pid_file,
            env=_child_env(self.settings),
        )
        wait_until(self.healthy, timeout_s=60, part=self.name, log_file=self.log_file, pid=pid)


class Worker(StackPart):
    """A worker is healthy once it has written its ready file (after connecting to Temporal)."""

    name = "worker"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.ready_file = settings.stack_dir / "run" / "worker.ready"

    @property
    def url(self) -> str:
        return f"task queue {self.settings.temporal_task_queue}"

    @property
    def metrics_url(self) -> str | None:
        port = self.settings.worker_metrics_port
        return f"http://{self.host}:{port}/metrics" if port > 0 else None

    def healthy(self) -> bool:
        pid = self.pid()
        try:
            return pid is not None and int(self.ready_file.read_text().strip()) == pid
        except (OSError, ValueError):
            return False

    def start(self) -> None:
        if self.settings.worker_metrics_port > 0:
            self.refuse_taken_ports({"WORKER_METRICS_PORT": self.settings.worker_metrics_port})
        self.ready_file.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        pid = spawn(
            [sys.executable, "-m", "toolkit", "worker", "--ready-file", str(self.ready_file)],
            log_file=self.log_file,
            pid_file=self.pid_file,
            env=_child_env(self.settings),
        )
        wait_until(self.healthy, timeout_s=60, part=self.name, log_file=self.log_file, pid=pid)
