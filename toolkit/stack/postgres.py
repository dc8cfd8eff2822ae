"""PostgreSQL for Parse, from the binaries in the ``pgserver`` wheel.

PostgreSQL refuses to run as root, and CI runs as root: then an unprivileged system user owns the
data directory and the binaries run through ``runuser``.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import subprocess
from pathlib import Path

from toolkit.settings import Settings
from toolkit.stack._process import StackError, StackPart, wait_until

PG_USER = "toolkitpg"
DATABASE = "parse"


def bin_dir() -> Path:
    # Located without importing pgserver: its import has side effects (it probes runtime dirs).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("postgres: the pgserver package is not installed")
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall" / "bin"


def _as_pg_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *argv] if os.geteuid() == 0 else argv


def _prepare_for_unprivileged_user(paths: list[Path]) -> None:
    """As root: make sure the postgres user exists, owns ``paths`` and can reach them."""
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
            capture_output=True,
        )
    for path in paths:
        subprocess.run(["chown", "-R", f"{PG_USER}:", str(path)], check=True)
        # Every parent must be traversable, and the binaries (inside the venv) too.
        for parent in path.resolve().parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)


class Postgres(StackPart):
    name = "postgres"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.root = settings.stack_dir / "postgres"
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "run"
        self.port = settings.postgres_port

    @property
    def url(self) -> str:
        return f"postgres://postgres@{self.host}:{self.port}/{DATABASE}"

    def healthy(self) -> bool:
        result = subprocess.run(
            [
                str(bin_dir() / "pg_isready"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-t",
                "2",
            ],
            capture_output=True,
        )
        return result.returncode == 0

    def start(self) -> None:
        self.refuse_taken_ports({"POSTGRES_PORT": self.port})
        for path in (self.root, self.socket_dir, self.log_file.parent):
            path.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        if os.geteuid() == 0:
            _prepare_for_unprivileged_user([self.root, self.log_file, bin_dir().parent])
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [
                    str(bin_dir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                "initdb",
            )
        options = f"-h {self.host} -p {self.port} -k {self.socket_dir}"
        self._run(
            [
                str(bin_dir() / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            "pg_ctl start",
        )
        postmaster_pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{postmaster_pid}\n")
        wait_until(self.healthy, timeout_s=60, part=self.name, log_file=self.log_file, pid=postmaster_pid)
        self._ensure_database()

    def _ensure_database(self) -> None:
        psql = [str(bin_dir() / "psql"), "-h", self.host, "-p", str(self.port), "-U", "postgres", "-tAc"]
        exists = subprocess.run(
            [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"], capture_output=True, text=True
        )
        if exists.stdout.strip() != "1":
            self._run(
                [
                    str(bin_dir() / "createdb"),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    DATABASE,
                ],
                "createdb",
            )

    def _run(self, argv: list[str], what: str) -> None:
        result = subprocess.run(_as_pg_user(argv), capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(
                f"postgres: {what} failed (exit {result.returncode}); see {self.log_file}\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
