"""The saturation measurement (issue 19): its plan, ratios and counters, and one tiny run on the real stack.

Only what is deterministic is asserted: rounds, counts of batches and memories, the requests and calls a
batch makes where their number is fixed by the code, and that two independent counts agree (what Parse
and Temporal counted against what the API reported in its Server-Timing). Never a time or a rate.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math

import httpx
import pytest
from temporalio.client import Client

from tests.fixtures.worker_process import wait_until
from toolkit import stack
from toolkit.cli.saturation import saturation_command
from toolkit.parse import ParseClient
from toolkit.parse.errors import ObjectNotFound
from toolkit.parse.users import ParseUser
from toolkit.rollout import read_flags
from toolkit.settings import Settings, load_settings
from toolkit.testing.ports import free_port
from toolkit.timing import collect, parse_counts, span
from toolkit.validation.perf import server_counts
from toolkit.validation.perf.saturation import (
    SaturationPlan,
    SaturationRow,
    _Run,
    _Webhooks,
    attach_ratios,
    format_warnings,
    measure_saturation,
    settle_warnings,
)
from toolkit.validation.workloads import make_memories

PROBE_CLASS = "SaturationCountProbe"  # no such class: nothing else ever asks Parse for it
# The direct rounds write under batch ids "direct-<hex>".
DIRECT_MEMORIES = {"batchId": {"$regex": "^direct-"}}
# Bounds a hang only: settling takes a few seconds (a close, then 1.5 s of quiet).
SETTLE_BOUND_S = 120.0


def _row(path: str, rate: float, wait: str = "poll") -> SaturationRow:
    return SaturationRow(
        path=path,
        wait="" if path == "direct" else wait,
        submitters=1,
        batches=1,
        completed=1,
        memories=100,
        seconds=1.0,
        memories_per_s=rate,
    )


def test_each_path_round_is_compared_with_the_direct_round_just_before_it() -> None:
    rows = attach_ratios(
        [
            _row("reference", 100.0),  # before any direct round: nothing to compare with
            _row("direct", 1000.0),
            _row("reference", 250.0),
            _row("legacy", 50.0),
            _row("direct", 500.0),
            _row("reference", 250.0, wait="webhook"),
        ]
    )
    assert [(r.vs_direct, r.direct_memories_per_s) for r in rows] == [
        (None, None),
        (1.0, 1000.0),
        (0.25, 1000.0),
        (0.05, 1000.0),
        (1.0, 500.0),
        (0.5, 500.0),
    ]


def test_the_plan_takes_turns_and_sets_the_canary_for_its_paths() -> None:
    plan = SaturationPlan(concurrency=(1, 4), webhook_paths=("reference", "legacy"))
    assert [r.label for r in plan.rounds()] == [
        "direct-1",
        "reference-poll-1",
        "legacy-poll-1",
        "direct-4",
        "reference-poll-4",
        "legacy-poll-4",
        "reference-webhook-4",
        "legacy-webhook-4",
    ]
    assert plan.percent == 50
    assert SaturationPlan(paths=("reference",)).percent == 100
    assert SaturationPlan(paths=("legacy",), webhook_paths=()).percent == 0
    for bad in ({"concurrency": (0,)}, {"concurrency": (65,)}, {"paths": ("other",)}, {"poll_interval_s": 0}):
        with pytest.raises(ValueError):
            SaturationPlan(**bad)  # type: ignore[arg-type]


def test_server_timing_counts_each_round_trip() -> None:
    with collect() as timings:
        for _ in range(3):
            with span("parse.GET.classes"):
                pass
        with span("temporal.start"):
            pass
    header = timings.header()
    assert parse_counts(header) == {"parse.GET.classes": 3, "temporal.start": 1}
    assert "parse.GET.classes;dur=" in header and ";count=3" in header and "temporal.start;dur=" in header


def test_saturation_command_refuses_bad_arguments_before_starting_anything(capsys, tmp_path) -> None:
    # No stack needed: each is refused before anything starts (a check let through would try to measure).
    settings = dataclasses.replace(load_settings(), max_batch_memories=1000)
    base = dict(
        concurrency=[1], batches=1, memories=10, poll_interval=0.25, paths=["reference"], webhook_paths=[],
        workers=1, workload="synthetic", profile=None, profile_rate=100, json=False,
    )  # fmt: skip
    poll = "--poll-interval takes a number of seconds above 0 and at most 600, got"
    refused = {
        "--concurrency takes 1-64, got 0": {"concurrency": [1, 0]},
        "--concurrency takes 1-64, got 65": {"concurrency": [65]},
        "--batches takes 1-100, got 0": {"batches": 0},
        "--batches takes 1-100, got -2": {"batches": -2},
        "--batches takes 1-100, got 101": {"batches": 101},
        "--memories takes 1-1,000, got 0": {"memories": 0},
        "--memories takes 1-1,000, got 1001": {"memories": 1001},  # over the API's MAX_BATCH_MEMORIES
        "--workers takes 1-8, got 0": {"workers": 0},
        "--workers takes 1-8, got 9": {"workers": 9},
        f"{poll} 0.0": {"poll_interval": 0.0},
        f"{poll} -0.5": {"poll_interval": -0.5},
        f"{poll} nan": {"poll_interval": math.nan},
        f"{poll} inf": {"poll_interval": math.inf},
        f"{poll} 601.0": {"poll_interval": 601.0},
        # 64 × 100 × 1000 = 6,400,000 memories in the direct round, all held at once.
        "the highest --concurrency × --batches × --memories takes 1-1,000,000, got 6400000": {
            "concurrency": [64], "batches": 100, "memories": 1000,
        },
        "--profile-rate takes 1-1000, got 0": {"profile": str(tmp_path), "profile_rate": 0},
    }  # fmt: skip
    for message, change in refused.items():
        assert saturation_command(argparse.Namespace(**(base | change)), settings) == 2, message
        assert capsys.readouterr().out == f"saturation: {message}\n"


async def test_a_transport_error_is_the_outcome_of_its_batch_not_the_end_of_the_run() -> None:
    # A real fault: the API's address is a port nobody listens on, so the submit's connection is refused.
    settings = load_settings()
    user = ParseUser("saturationUser", "saturation-user", "r:a-session-token-never-shown")
    memories = make_memories("synthetic", 2)
    async with (
        ParseClient(settings) as parse,
        httpx.AsyncClient() as scrape,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{free_port()}") as api,
    ):
        run = _Run(
            SaturationPlan(paths=("reference",), webhook_paths=(), memories_per_batch=2),
            settings,
            parse,
            scrape,
            api,
            {"reference": [user]},
            _Webhooks(asyncio.get_running_loop()),
            {},
            memories,
        )
        outcome = await run.one_batch(user, "reference", wait="poll")
    assert (outcome.batch_id, outcome.status, outcome.successful, outcome.polls) == (None, "error", 0, 0)
    # The error's type only: the request it failed on held the memories and the session token.
    assert outcome.error == "submit failed: ConnectError"


async def test_parse_counts_every_request_it_answers_and_every_batch_sub_request(
    settings: Settings, parse: ParseClient
) -> None:
    rows = {row.name: row for row in await asyncio.to_thread(stack.status, settings)}
    assert rows["parse"].metrics_url == settings.parse_metrics_url
    assert rows["temporal"].metrics_url == settings.temporal_metrics_url is not None
    assert f"TEMPORAL_METRICS_PORT={settings.temporal_metrics_port}" in settings.stack_env_file.read_text()

    async with httpx.AsyncClient() as http:
        before = await server_counts.read(http, settings)
        lookups = [{"method": "GET", "path": f"/parse/classes/{PROBE_CLASS}/x{i}"} for i in range(3)]
        await parse.request("POST", "batch", json_body={"requests": lookups}, master=True)
        with pytest.raises(ObjectNotFound):
            await parse.get_object(PROBE_CLASS, "missing", master=True)
        after = await server_counts.read(http, settings)
    counted = server_counts.delta(before, after)
    assert counted.parse_requests[f"GET classes/{PROBE_CLASS}"] == 1
    # A /batch request is named by the classes of its sub-requests, each of which is counted too.
    assert counted.parse_requests[f"POST batch/{PROBE_CLASS}"] == 1
    assert counted.parse_batch_subrequests[f"GET classes/{PROBE_CLASS}"] == 3
    assert counted.parse_error_answers == 1


async def test_settled_counts_keep_the_mark_of_the_reading_that_first_counted_the_close(
    settings: Settings, temporal: Client, unique: str
) -> None:
    # The CPU of a round is marked with the reading its counts end at: one that counted the round's
    # workflows closed, never one taken before they closed (the client's end, the closing work missed).
    readings = 0

    def mark() -> int:
        nonlocal readings
        readings += 1
        return readings

    async def waiting_for_the_close() -> bool:
        return readings >= 2

    async with httpx.AsyncClient() as http:
        quiet = await server_counts.read_settled(http, settings, mark=lambda: None)
        settling = asyncio.create_task(
            server_counts.read_settled(
                http,
                settings,
                mark=mark,
                max_s=SETTLE_BOUND_S,
                closed_at_least=quiet.counts.temporal_workflows_closed + 1,
            )
        )
        await wait_until(waiting_for_the_close, SETTLE_BOUND_S, "two readings before the close")
        read_before_the_close = readings
        # A workflow nothing polls for, closed at once: a close the test decides the moment of.
        handle = await temporal.start_workflow(
            "SaturationSettleProbe", id=f"settle-probe-{unique}", task_queue=f"unpolled-{unique}"
        )
        await handle.terminate(reason="test: a close for the settling to wait for")
        settled = await settling
    assert settled.settled
    assert settled.counts.temporal_workflows_closed >= quiet.counts.temporal_workflows_closed + 1
    assert settled.mark > read_before_the_close, (settled.mark, read_before_the_close)


async def test_settling_that_never_sees_the_awaited_closes_gives_up_and_says_so(settings: Settings) -> None:
    async with httpx.AsyncClient() as http:
        now = await server_counts.read(http, settings)
        # A million more closes than the server has counted: none of them can come within the second.
        gave_up = await server_counts.read_settled(
            http,
            settings,
            mark=lambda: None,
            max_s=1.0,
            closed_at_least=now.temporal_workflows_closed + 1_000_000,
        )
    assert gave_up.settled is False


def test_a_round_whose_counts_may_not_be_whole_carries_a_warning_saying_why() -> None:
    assert settle_warnings(settled_before=True, settled_after=True, closed=3, workflows=3) == ()
    assert settle_warnings(settled_before=True, settled_after=True, closed=5, workflows=3) == ()
    assert settle_warnings(settled_before=True, settled_after=False, closed=2, workflows=3) == (
        "the servers' counts had not settled 30 s after the round: its counts and CPU may miss its last work",
        "Temporal counted 2 of the round's 3 workflows closed: the closing work of the others is missing "
        "from its counts and CPU",
    )
    assert settle_warnings(settled_before=False, settled_after=True, closed=0, workflows=0) == (
        "the servers' counts were still moving 30 s after the round before: this round's counts and CPU "
        "may hold some of its work",
    )
    row = dataclasses.replace(_row("reference", 100.0), warnings=("a warning",))
    assert format_warnings(row) == ["   reference-poll-1: WARNING: a warning"]


async def test_a_tiny_saturation_run_counts_every_batch_and_the_requests_it_made(settings: Settings) -> None:
    plan = SaturationPlan(
        concurrency=(2,),
        batches_per_submitter=1,
        memories_per_batch=10,
        webhook_paths=("reference", "legacy"),
        workload="synthetic",
        batch_timeout_s=240,
    )
    async with ParseClient(settings) as parse:
        flags_before = await read_flags(parse, settings)
        direct_before = await parse.count("Memory", DIRECT_MEMORIES, master=True)
    rows = await measure_saturation(settings, plan)
    async with ParseClient(settings) as parse:
        assert await read_flags(parse, settings) == flags_before  # the run put the flags back
        # The direct rounds' memories (20 here) were deleted again; the path rounds' batches stay.
        assert await parse.count("Memory", DIRECT_MEMORIES, master=True) == direct_before

    by_label = {row.label: row for row in rows}
    assert list(by_label) == [
        "direct-2",
        "reference-poll-2",
        "legacy-poll-2",
        "reference-webhook-2",
        "legacy-webhook-2",
    ]
    for row in rows:  # every batch of every round completed, every memory written
        assert (row.batches, row.completed, row.memories) == (2, 2, 20), row
        assert row.vs_direct is not None and row.vs_direct > 0
        assert {"api", "worker", "parse", "postgres", "temporal", "client"} <= set(row.cpu_s_per_batch), row
        assert all(cpu >= 0 for cpu in row.cpu_s_per_batch.values())
        assert row.machine_busy is not None and 0 <= row.machine_busy <= 1
        # Each memory once, through Parse's /batch (beside the in-flight slot transactions).
        assert row.parse_batch_subrequests["POST classes/Memory"] == 20
        assert row.errors == () and row.warnings == ()
        # Temporal saw each batch's workflow close before the round's counts were read.
        assert row.workflows_closed == (0 if row.path == "direct" else 2)

    # Direct: the 20 memories in one /batch call of up to 50; nothing else, and no Temporal work.
    direct = by_label["direct-2"]
    assert direct.parse_requests == {"POST batch/Memory": 1}
    assert direct.temporal_calls_per_batch == 0 and direct.api_spans == {}

    for label in ("reference-poll-2", "reference-webhook-2"):
        row = by_label[label]
        # Per batch: one file upload, one request object, one download, one /batch call of 10 memories.
        for route in ("POST files", "POST classes/BatchMemoryRequest", "GET files", "POST batch/Memory"):
            assert row.parse_requests[route] == 2, (label, route, row.parse_requests)
        # What Parse and Temporal counted agrees with what the API reported doing.
        assert row.api_spans["parse.POST.files"] == row.parse_requests["POST files"]
        assert row.api_spans["temporal.start"] == row.temporal_calls["StartWorkflowExecution"] == 2
    # The webhook round sends one webhook per batch from a second activity, and never polls.
    webhook = by_label["reference-webhook-2"]
    assert webhook.webhooks_received == 2 and webhook.status_polls_per_batch == 0
    assert webhook.temporal_calls["RespondActivityTaskCompleted"] == 2 * 2
    poll = by_label["reference-poll-2"]
    assert poll.temporal_calls["RespondActivityTaskCompleted"] == 2 and poll.status_polls_per_batch >= 1

    for label in ("legacy-poll-2", "legacy-webhook-2"):
        row = by_label[label]
        # The legacy fan-out writes each memory in its own /batch call, from an activity of its own.
        assert row.parse_requests["POST batch/Memory"] == 20
        assert row.parse_requests.get("POST files", 0) == 0
        assert row.temporal_calls["StartWorkflowExecution"] == row.api_spans["temporal.start"] == 2
        assert row.temporal_calls["RespondActivityTaskCompleted"] >= 20
    assert by_label["legacy-webhook-2"].webhooks_received == 2
