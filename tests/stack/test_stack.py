"""The local stack as a unit: idempotent up, clean down, clear errors, stack.env (issue 2)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.settings import STACK_ENV_KEYS, Settings, read_env_file
from toolkit.stack._process import pid_alive
from toolkit.testing.ports import free_port

PARTS = ("postgres", "parse", "temporal", "api", "worker")


def toolkit(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "toolkit", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def pids(stack_dir: Path) -> dict[str, int]:
    return {part: int((stack_dir / "pids" / f"{part}.pid").read_text()) for part in PARTS}


def test_up_twice_is_a_no_op(settings: Settings, stack_environ: dict[str, str]) -> None:
    before = pids(settings.stack_dir)
    result = toolkit("stack", "up", env=stack_environ)
    assert result.returncode == 0, result.stderr
    for part in PARTS:
        assert f"{part:<9} already running (pid {before[part]})" in result.stdout
    assert "schema up to date" in result.stdout
    assert pids(settings.stack_dir) == before


def test_status_reports_every_part_healthy(stack_environ: dict[str, str]) -> None:
    result = toolkit("stack", "status", env=stack_environ)
    assert result.returncode == 0, result.stdout + result.stderr
    for part in PARTS:
        line = next(line for line in result.stdout.splitlines() if line.startswith(part))
        assert "healthy" in line


def test_stack_env_holds_every_contract_key(settings: Settings) -> None:
    values = read_env_file(settings.stack_env_file)
    for key in STACK_ENV_KEYS:
        assert values.get(key), f"{key} missing from stack.env"
    assert values["PARSE_SERVER_URL"] == settings.parse_url
    assert values["TEMPORAL_ADDRESS"] == settings.temporal_target
    assert values["TEMPORAL_UI_URL"].startswith("http://")
    assert oct(settings.stack_env_file.stat().st_mode & 0o777) == "0o600"


@pytest.fixture
def throwaway_env(tmp_path: Path) -> dict[str, str]:
    """A second, independent stack (own directory and ports) for tests that stop what they start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARSE_", "TEMPORAL_", "TOOLKIT_"))}
    env.update(
        TOOLKIT_STACK_DIR=str(tmp_path / "stack"),
        POSTGRES_PORT=str(free_port()),
        PARSE_PORT=str(free_port()),
        TEMPORAL_PORT=str(free_port()),
        TEMPORAL_UI_PORT=str(free_port()),
        API_PORT=str(free_port()),
    )
    yield env
    toolkit("stack", "down", env=env)


def test_down_leaves_no_process(throwaway_env: dict[str, str]) -> None:
    stack_dir = Path(throwaway_env["TOOLKIT_STACK_DIR"])
    up = toolkit("stack", "up", env=throwaway_env)
    assert up.returncode == 0, up.stdout + up.stderr
    started = pids(stack_dir)
    assert all(pid_alive(pid) for pid in started.values())

    down = toolkit("stack", "down", env=throwaway_env)
    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(pid) for pid in started.values())
    assert list((stack_dir / "pids").glob("*.pid")) == []
    # No child either (postgres backends, the real node binary, uvicorn): nothing mentions the stack dir.
    leftovers = subprocess.run(["pgrep", "-af", str(stack_dir)], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""
    status = toolkit("stack", "status", env=throwaway_env)
    assert status.returncode == 1
    assert status.stdout.count("stopped") == len(PARTS)


def test_port_already_taken_names_the_part_and_port(throwaway_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        throwaway_env["POSTGRES_PORT"] = str(port)
        result = toolkit("stack", "up", env=throwaway_env)
    assert result.returncode == 1
    assert f"postgres: port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "POSTGRES_PORT" in result.stderr
