"""/proc readings: pids from the stack's pid files, CPU seconds, peak RSS and its reset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from toolkit.validation.perf import procstats

BURN_HALF_A_SECOND = "import time\nwhile time.process_time() < 0.5:\n    pass\n"


def test_stack_pids_keep_live_processes_only_and_count_workers(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    (pids / "api.pid").write_text(f"{os.getpid()}\n")
    (pids / "worker.pid").write_text(f"{os.getpid()}\n")
    (pids / "worker2.pid").write_text(f"{os.getppid()}\n")
    (pids / "parse.pid").write_text("999999999\n")  # beyond pid_max: never a live process
    (pids / "temporal.pid").write_text("not a pid\n")
    expected = {"api": os.getpid(), "worker": os.getpid(), "worker2": os.getppid()}
    assert procstats.stack_pids(tmp_path) == expected
    assert procstats.worker_count(tmp_path) == 2


def test_cpu_seconds_grow_with_work_and_the_delta_names_each_part() -> None:
    before = procstats.sample({"me": os.getpid()})
    sum(i * i for i in range(2_000_000))  # burn some CPU
    after = procstats.sample({"me": os.getpid(), "gone": 999_999_999})
    assert [s.part for s in after] == ["me"]
    delta = procstats.cpu_delta(before, after)
    assert set(delta) == {"me"} and delta["me"] > 0
    assert after[0].peak_rss_kb >= after[0].rss_kb > 0


def test_a_process_alone_leaves_out_the_cpu_of_the_children_it_started() -> None:
    # A measuring process that starts what it measures (variants, profilers) must not count them twice.
    before = procstats.sample({"with": os.getpid(), "alone": os.getpid()}, alone={"alone"})
    subprocess.run([sys.executable, "-c", BURN_HALF_A_SECOND], check=True)  # started, waited for, reaped
    after = procstats.sample({"with": os.getpid(), "alone": os.getpid()}, alone={"alone"})
    delta = procstats.cpu_delta(before, after)
    assert delta["with"] >= 0.5  # the child's half second, counted once it was reaped
    assert delta["alone"] < 0.5


def test_peak_rss_can_be_reset_to_the_current_rss() -> None:
    ballast = bytearray(64 * 1024 * 1024)  # raise the peak by 64 MiB, then drop it
    ballast[::4096] = b"x" * len(ballast[::4096])
    peak = procstats.peak_rss_kb(os.getpid())
    del ballast
    assert procstats.reset_peak_rss(os.getpid())
    assert peak is not None and procstats.peak_rss_kb(os.getpid()) < peak - 32 * 1024


def test_machine_cpu_seconds_are_busy_within_total() -> None:
    reading = procstats.machine_cpu_seconds()
    assert reading is not None
    busy, total = reading
    assert 0 < busy <= total
