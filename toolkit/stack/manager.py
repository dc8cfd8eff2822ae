"""``toolkit stack up | down | status``: the local stack as one unit (design §4.1)."""

from __future__ import annotations

import dataclasses
import secrets
import signal
import time
from dataclasses import dataclass

from toolkit.ports import free_port
from toolkit.settings import Settings
from toolkit.stack._process import StackError, StackPart, stop_pid
from toolkit.stack.parse_server import ParseServer
from toolkit.stack.postgres import Postgres
from toolkit.stack.services import ApiServer, Worker
from toolkit.stack.temporal_server import TemporalServer


@dataclass(frozen=True)
class PartStatus:
    name: str
    pid: int | None
    url: str
    healthy: bool
    metrics_url: str | None = None  # where Prometheus scrapes the part, if it exports metrics


def with_local_secrets(settings: Settings) -> Settings:
    """Fill in Parse keys for the local stack when none are configured (kept in stack.env after).

    Also the metrics ports of the worker and of the Temporal dev server: free ones on first ``up``,
    then kept in stack.env, so stacks on other port blocks never collide on a fixed default.
    """
    changes: dict[str, object] = {"webhook_allow_private": True}
    if settings.worker_metrics_port <= 0:
        changes["worker_metrics_port"] = free_port(settings.bind_host)
    if settings.temporal_metrics_port <= 0:
        changes["temporal_metrics_port"] = free_port(settings.bind_host)
    if not settings.parse_master_key:
        changes["parse_master_key"] = "master-" + secrets.token_hex(16)
    if not settings.parse_rest_api_key:
        changes["parse_rest_api_key"] = "rest-" + secrets.token_hex(16)
    return dataclasses.replace(settings, **changes)


def servers(settings: Settings) -> list[StackPart]:
    postgres = Postgres(settings)
    return [postgres, ParseServer(settings, postgres.url), TemporalServer(settings)]


def processes(settings: Settings) -> list[StackPart]:
    return [ApiServer(settings), Worker(settings)]


def parts(settings: Settings) -> list[StackPart]:
    """The stack's parts in start order (stopped in reverse)."""
    return servers(settings) + processes(settings)


def write_stack_env(settings: Settings) -> None:
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{key}={value}" for key, value in settings.stack_env().items()]
    path = settings.stack_env_file
    path.write_text(
        "# Written by `toolkit stack up`. Environment variables override these.\n" + "\n".join(lines) + "\n"
    )
    path.chmod(0o600)  # it holds the master key


def up(settings: Settings, *, echo=print) -> Settings:
    """Start every part that is not running, wait for health, migrate, write stack.env. Idempotent."""
    settings = with_local_secrets(settings)
    write_stack_env(settings)
    for part in servers(settings):
        _ensure_running(part, echo)
    # The API and the worker rely on the schema, so migrate before they start.
    from toolkit.parse.schema import migrate_sync

    changes = migrate_sync(settings)
    echo("migrate   " + ("; ".join(changes) if changes else "schema up to date"))
    for part in processes(settings):
        _ensure_running(part, echo)
    return settings


def _ensure_running(part: StackPart, echo) -> None:
    pid = part.pid()
    if pid is not None and part.healthy():
        echo(f"{part.name:<9} already running (pid {pid})  {part.url}")
        return
    if pid is not None:
        raise StackError(
            f"{part.name}: running (pid {pid}) but not healthy; see {part.log_file}. "
            "Run `toolkit stack down` and try again."
        )
    started = time.monotonic()
    part.start()
    echo(f"{part.name:<9} started (pid {part.pid()}) in {time.monotonic() - started:.1f}s  {part.url}")


def down(settings: Settings, *, echo=print, grace_s: float = 10.0) -> None:
    """Stop every part by its pid file: TERM, then KILL after the grace period."""
    for part in reversed(parts(settings)):
        pid = part.pid()
        if pid is None:
            continue
        # Postgres treats SIGTERM as a "smart" shutdown that waits for clients; SIGINT is its fast mode.
        first = signal.SIGINT if part.name == "postgres" else signal.SIGTERM
        stop_pid(pid, grace_s=grace_s, first_signal=first)
        part.pid()  # removes the now-stale pid file
        echo(f"{part.name:<9} stopped (pid {pid})")


def status(settings: Settings) -> list[PartStatus]:
    result = []
    for part in parts(settings):
        pid = part.pid()
        result.append(
            PartStatus(part.name, pid, part.url, pid is not None and part.healthy(), part.metrics_url)
        )
    return result


__all__ = ["PartStatus", "StackError", "down", "parts", "status", "up", "write_stack_env"]
