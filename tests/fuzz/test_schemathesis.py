"""Schemathesis against the API's own /openapi.json, with every check on (issue 11).

Two runs against the live API of the test stack: with a real session token, and with none. Each must
find no 5xx, no answer outside the schema, and no schema-valid request that the server refuses. The
number of examples per operation is bounded (``FUZZ_MAX_EXAMPLES``) and the seed is fixed, so a run is
reproducible and takes a couple of minutes; the stateful phase follows the API's links (submit, then
status) on its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.parse.users import ParseUser
from toolkit.settings import Settings

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "6"))
SEED = int(os.environ.get("FUZZ_SEED", "20261129"))
RUN_TIMEOUT_S = 600


def schemathesis(settings: Settings, tmp_path: Path, headers: list[str]) -> tuple[int, str]:
    argv = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{settings.api_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
        "--no-color",
        "--output-sanitize",
        "true",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    for header in headers:
        argv += ["--header", header]
    result = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env={**os.environ}
    )
    return result.returncode, result.stdout + result.stderr


def phases(output: str) -> str:
    """The per-phase lines of the summary (e.g. "Stateful (in 171.30s)"), for the test log."""
    return "; ".join(
        m.group(0) for m in re.finditer(r"(Examples|Coverage|Fuzzing|Stateful) \(in [0-9.]+s\)", output)
    )


def generated(output: str) -> int:
    match = re.search(r"(\d+) generated", output)
    assert match, f"no test case count in the output:\n{output[-3000:]}"
    return int(match.group(1))


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
async def test_fuzz_with_a_session(settings: Settings, user: ParseUser, tmp_path: Path) -> None:
    code, output = schemathesis(settings, tmp_path, [f"X-Parse-Session-Token: {user.session_token}"])
    assert code == 0, output[-6000:]
    count = generated(output)
    assert count >= 3 * MAX_EXAMPLES, output[-3000:]
    assert user.session_token not in output  # the report sanitizes the credential
    print(f"schemathesis with a session: {count} test cases, seed {SEED}; {phases(output)}")


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
async def test_fuzz_without_a_session(settings: Settings, tmp_path: Path) -> None:
    code, output = schemathesis(settings, tmp_path, [])
    assert code == 0, output[-6000:]
    count = generated(output)
    assert count >= 3 * MAX_EXAMPLES, output[-3000:]
    print(f"schemathesis without a session: {count} test cases, seed {SEED}; {phases(output)}")
