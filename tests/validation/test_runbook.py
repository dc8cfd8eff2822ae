"""The runbook against the real stack: a failing gate rolls back (flag off and percent 0), a dry run
changes nothing, a failed preflight stops before any change; and the rollback itself holds when Parse
goes away (a real TCP proxy cut), when the stage's flags read back otherwise, and on Ctrl-C."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from toolkit import rollout
from toolkit.parse import ParseClient
from toolkit.rollout import RolloutFlags, read_flags, write_flags
from toolkit.settings import REPO_ROOT, Settings
from toolkit.testing.tcp_proxy import TcpProxy
from toolkit.validation import runbook
from toolkit.validation.canary import CanaryConfig
from toolkit.validation.runbook import RunbookConfig, run_runbook
from toolkit.validation.traffic import TrafficPlan

# 4 batches per path per analysis, the fewest at which the judge's test can reject at 0.05: too few to
# pass anything, so the judge here fails on its hard gates, which is what the rollback needs.
TRAFFIC = TrafficPlan(batches=8, batch_sizes=(2, 4), users=4, min_users_per_path=2, workload="synthetic")
# A history budget below the real one (~2.4 KB per reference batch): the first analysis fails.
FAILING = CanaryConfig(min_samples=4, max_canary_history_bytes=1000)


@pytest.fixture
async def flags_kept(parse: ParseClient, settings: Settings) -> AsyncIterator[RolloutFlags]:
    """The flags as found; put back after the test whatever it did."""
    before = await read_flags(parse, settings)
    yield before
    await write_flags(parse, settings, enabled=before.use_parse_batch_storage, percent=before.canary_percent)


async def test_failing_gate_turns_the_flag_off_and_says_why(
    settings: Settings, parse: ParseClient, flags_kept: RolloutFlags
) -> None:
    # Real measurements against a budget the test sets below them: the reference path's history is
    # ~2.4 KB per batch, so a 1,000-byte budget fails the gate at the first stage.
    config = RunbookConfig(
        stages=(50, 100), canary=FAILING, traffic=TRAFFIC, restore_flags=False, cleanup=False
    )
    result = await run_runbook(settings, config)

    assert result.outcome == "rolled back"
    live = await read_flags(parse, settings)
    # Off, and the percentage back to 0: a later `toolkit rollout on` must not bring 50 % back.
    assert (live.use_parse_batch_storage, live.canary_percent) == (False, 0)
    assert result.flags_after == live
    assert "history per canary batch" in result.reason and "1,000 B" in result.reason
    record = result.record
    gate = record[(record["phase"] == "gate")]
    assert gate["result"].tolist() == ["fail"]
    assert gate["stage"].tolist() == [50]
    rollback = record[record["phase"] == "rollback"].iloc[0]
    assert rollback["result"] == "ok" and rollback["flag_on"] == False  # noqa: E712 (numpy bool)
    assert "history per canary batch" in rollback["detail"]
    # It stopped: 100 % was never set.
    assert 100 not in record.loc[record["step"] == "set flags", "stage"].tolist()
    assert record.iloc[-1]["result"] == "rolled back"
    assert result.rollback_s is not None


async def test_dry_run_changes_nothing(
    settings: Settings, parse: ParseClient, flags_kept: RolloutFlags
) -> None:
    marked = await write_flags(parse, settings, enabled=True, percent=37)
    result = await run_runbook(settings, RunbookConfig(dry_run=True, traffic=TRAFFIC))
    assert result.outcome == "dry run"
    assert await read_flags(parse, settings) == marked
    record = result.record
    stage_rows = record[record["step"] == "set flags"]
    assert stage_rows["stage"].tolist() == [0, 10, 25, 50, 75, 100]
    assert stage_rows["result"].eq("dry-run").all()
    assert "would set on=True percent=10" in stage_rows.iloc[1]["detail"]
    assert not record["phase"].isin(["gate", "rollback", "restore"]).any()
    assert record.loc[record["step"] == "batch files cleaned", "result"].tolist() == ["dry-run"]


async def test_failed_preflight_changes_nothing(
    settings: Settings, parse: ParseClient, flags_kept: RolloutFlags
) -> None:
    # A task queue no worker polls: the preflight must stop the run before any flag is set.
    unpolled = dataclasses.replace(settings, temporal_task_queue="nobody-polls-this-queue")
    result = await run_runbook(unpolled, RunbookConfig(stages=(0, 10), traffic=TRAFFIC))
    assert result.outcome == "preflight failed"
    polling = result.record.set_index("step").loc["worker polling"]
    assert polling["result"] == "fail" and "0 workflow pollers" in polling["detail"]
    assert not (result.record["step"] == "set flags").any()
    assert await read_flags(parse, settings) == flags_kept


# ---- the rollback itself -------------------------------------------------------------------------
@pytest.fixture
def parse_proxy(settings: Settings) -> Iterator[TcpProxy]:
    url = httpx.URL(settings.parse_url)
    with TcpProxy(url.host, url.port or 80) as proxy:
        yield proxy


def through(proxy: TcpProxy, settings: Settings) -> Settings:
    """The runbook's own Parse calls go through the proxy; the API and the worker keep the real Parse."""
    url = httpx.URL(settings.parse_url).copy_with(host="127.0.0.1", port=proxy.port)
    return dataclasses.replace(settings, parse_server_url=str(url))


async def test_a_rollback_write_that_fails_is_not_reported_as_rolled_back(
    settings: Settings, parse: ParseClient, flags_kept: RolloutFlags, parse_proxy: TcpProxy
) -> None:
    """Parse is cut just as the gate fails, and back for the final read: the flag could not be turned
    off, so the outcome must say so (it said "rolled back")."""

    def log(line: str) -> None:
        if line.startswith("[gate] canary analysis: fail"):
            parse_proxy.set_mode("down")
        elif line.startswith("[rollback] flag off: fail"):
            parse_proxy.set_mode("forward")

    config = RunbookConfig(stages=(50,), canary=FAILING, traffic=TRAFFIC, restore_flags=False, cleanup=False)
    result = await run_runbook(through(parse_proxy, settings), config, log=log)

    assert result.outcome == "rollback failed", result.reason
    assert "toolkit rollout off" in result.reason and "history per canary batch" in result.reason
    assert result.rollback_s is None
    live = await read_flags(parse, settings)
    assert (live.use_parse_batch_storage, live.canary_percent) == (True, 50)  # really still on
    assert result.flags_after == live


async def test_parse_gone_mid_soak_is_an_outcome_not_an_exception(
    settings: Settings, parse: ParseClient, flags_kept: RolloutFlags, parse_proxy: TcpProxy
) -> None:
    """Parse is cut once the stage is set and stays cut: the soak fails, the rollback fails, and the
    final read of the flags fails. run_runbook returns all of that (its final read raised)."""

    def log(line: str) -> None:
        if line.startswith("[stage] set flags: ok"):
            parse_proxy.set_mode("down")

    config = RunbookConfig(stages=(10,), traffic=None, settle_s=0, restore_flags=True, cleanup=False)
    result = await run_runbook(through(parse_proxy, settings), config, log=log)

    assert result.outcome == "rollback failed", result.reason
    assert result.reason.startswith("runbook error: ")
    assert result.flags_after is None
    steps = result.record.set_index("step")
    assert steps.loc["read flags", "result"] == "fail"
    assert steps.loc["flags restored", "result"] == "fail"
    live = await read_flags(parse, settings)
    assert (live.use_parse_batch_storage, live.canary_percent) == (True, 10)


async def test_flags_that_read_back_otherwise_stop_the_run_before_the_soak(
    settings: Settings, parse: ParseClient, flags_kept: RolloutFlags, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another operator writes the flags between the runbook's write and its read-back (a real second
    write to Parse, forced into that moment): the stage is not in force, so no soak may run on it."""
    real_write = rollout.write_flags

    async def write_then_another_writer(parse: ParseClient, settings: Settings, **changes: object):
        await real_write(parse, settings, **changes)  # type: ignore[arg-type]
        if changes.get("percent") == 25:
            await real_write(parse, settings, percent=3)  # the other operator
        return await read_flags(parse, settings)

    monkeypatch.setattr(runbook, "write_flags", write_then_another_writer)
    config = RunbookConfig(stages=(25, 50), traffic=None, settle_s=0, restore_flags=False, cleanup=False)
    result = await run_runbook(settings, config)

    assert result.outcome == "rolled back", result.reason
    assert "percent=3, not on at 25%" in result.reason
    record = result.record
    assert record.loc[record["step"] == "set flags", "result"].tolist() == ["fail"]
    assert not record["phase"].isin(["soak", "gate"]).any()
    live = await read_flags(parse, settings)
    assert (live.use_parse_batch_storage, live.canary_percent) == (False, 0)


# The child takes Ctrl-C as an operator's terminal delivers it. A process started in the background of a
# non-interactive shell inherits SIGINT ignored (POSIX), and Python then installs no handler: a suite run
# that way (nohup make test &) sent a SIGINT nobody received, and the test timed out.
RUN_AND_WAIT = """
import asyncio, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from toolkit.settings import load_settings
from toolkit.validation.runbook import RunbookConfig, run_runbook
config = RunbookConfig(
    stages=(10,), soak_s=120, analysis_interval_s=30, settle_s=0, traffic=None, cleanup=False
)
asyncio.run(run_runbook(load_settings(), config, log=lambda line: print(line, flush=True)))
"""


async def test_ctrl_c_mid_soak_turns_the_flag_off(
    settings: Settings, parse: ParseClient, flags_kept: RolloutFlags, stack_environ: dict[str, str]
) -> None:
    """A real SIGINT to a process soaking at 10 %: the flag goes off and the percentage to 0 before it
    exits (only Exception was caught, and the flag stayed on)."""
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_AND_WAIT],
        cwd=REPO_ROOT,
        env=stack_environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(process.stdout.readline)  # type: ignore[union-attr]
            if line.startswith("[gate] canary analysis") or not line:
                break
        live = await read_flags(parse, settings)
        assert (live.use_parse_batch_storage, live.canary_percent) == (True, 10), "not soaking at 10 %"
        process.send_signal(signal.SIGINT)
        output, _ = await asyncio.to_thread(process.communicate, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert "[rollback] flag off: ok read back on=False percent=0" in output, output
    assert "KeyboardInterrupt" in output
    live = await read_flags(parse, settings)
    assert (live.use_parse_batch_storage, live.canary_percent) == (False, 0)
