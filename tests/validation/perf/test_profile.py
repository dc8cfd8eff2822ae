"""Profiles of running processes (issue 19): py-spy records summed into the functions that burn the CPU."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.worker_process import wait_until
from toolkit.validation.perf.profile import profiling, summarize

# Writes its ready file, then spins until it has used 1.5 s of CPU, and exits: the profile ends with it.
HOT_SCRIPT = """
import sys, time
from pathlib import Path

def spin_here():
    count = 0
    while time.process_time() < 1.5:
        count += 1

Path(sys.argv[1]).write_text("ready")
spin_here()
"""
# Far longer than the healthy case (a Python start and 1.5 s of CPU on a loaded 2-core machine).
HANG_BOUND_S = 120.0

RECORD = """\
main (toolkit/cli/__init__.py:1);run (toolkit/api/app.py:5);iterencode (json/encoder.py:1) 3
main (toolkit/cli/__init__.py:1);run (toolkit/api/app.py:5) 1
main (toolkit/cli/__init__.py:1);_run_once (asyncio/base_events.py:1);EpollSelector.select (selectors.py:4) 6
"""


def test_a_summary_leaves_waits_out_and_names_our_own_functions(tmp_path: Path) -> None:
    record = tmp_path / "api.txt"
    record.write_text(RECORD)
    profile = summarize(record, "api")
    assert (profile.samples, profile.waiting) == (4, 6)
    shares = [(f.function, f.self_share, f.total_share) for f in profile.functions]
    assert shares == [
        ("iterencode (json/encoder.py:1)", 0.75, 0.75),
        ("run (toolkit/api/app.py:5)", 0.25, 1.0),
    ]
    # Our functions by what they cost in all (the command line that started the process left out).
    assert [(f.function, f.total_share) for f in profile.toolkit] == [("run (toolkit/api/app.py:5)", 1.0)]
    assert profile.packages == [("json", 0.75), ("toolkit.api", 0.25)]


async def test_a_profile_of_a_running_process_names_the_function_that_burns_the_cpu(tmp_path: Path) -> None:
    script, ready = tmp_path / "hot.py", tmp_path / "hot.ready"
    script.write_text(HOT_SCRIPT)
    process = subprocess.Popen([sys.executable, str(script), str(ready)])
    try:

        async def started() -> bool:
            return ready.exists()

        await wait_until(started, HANG_BOUND_S, "the hot script to start")
        async with profiling({"hot": process.pid}, tmp_path / "records") as recording:
            await asyncio.wait_for(asyncio.to_thread(process.wait), HANG_BOUND_S)  # it exits by itself
        assert recording.problems == {}
        profile = summarize(recording.files["hot"], "hot")
    finally:
        process.kill()
        process.wait()
    assert profile.samples > 0
    top = profile.functions[0]
    assert top.function.startswith("spin_here (hot.py:"), profile.functions
    assert top.self_share > 0.5


async def test_a_process_that_is_gone_is_reported_with_py_spys_words_not_raised(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stderr = tmp_path / "gone.stderr.txt"  # py-spy's own messages, beside the record it could not write

    async def py_spy_said_why() -> bool:
        return "Error" in stderr.read_text()

    async with profiling({"gone": gone.pid}, tmp_path) as recording:
        await wait_until(py_spy_said_why, HANG_BOUND_S, "py-spy's error about the process")
    assert not recording.files["gone"].exists()
    assert list(recording.problems) == ["gone"]
    assert "Check that the process is running" in recording.problems["gone"], recording.problems


async def test_an_error_of_the_profiled_block_is_never_replaced_by_the_profilers(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(RuntimeError, match="the round failed") as raised:
        async with profiling({"gone": gone.pid}, tmp_path):
            raise RuntimeError("the round failed")
    assert raised.value.__context__ is None  # nothing raised over it while the profiler stopped
