"""The deployment timeline, made executable: preflight, staged rollout with gated soaks, cleanup checklist.

1. **Preflight** (nothing is changed if one check fails): the Parse schema is migrated; the rollout
   flags are readable, master-key-only and writable; a worker polls the task queue for workflow and
   activity tasks (Temporal ``DescribeTaskQueue`` pollers); a Parse File upload, download and delete
   work.
2. **Stages** 0 → 10 → 25 → 50 → 75 → 100 %, each set through :mod:`toolkit.rollout` and read back;
   flags that do not read back as set (another writer) stop the run before the soak. After each, a
   **soak**: the gate, an analysis repeated over the soak window as in Argo Rollouts / Flagger, whose
   judgement is the canary verdict of :mod:`toolkit.validation.canary` over the batches created since
   the stage began (read with :func:`toolkit.validation.metrics.collect_batches`). With ``traffic`` the
   runbook makes the stage's traffic itself, as many batches per path as the judge says it needs
   (:func:`toolkit.validation.canary_window.run_until_decided`), so each analysis shows what it could
   have detected. More failed analyses than ``failure_limit`` **roll back**: flag off *and* percent 0
   (so a later ``toolkit rollout on`` cannot bring the failed percentage back), read back, the reason
   recorded, and stop. A soak whose last analysis is not a pass (``not enough data``, ``marginal``)
   halts the rollout where it is: never a promotion without evidence, nor a rollback without a
   failure. Stage 0 only collects the baseline.
3. **Cleanup checklist** once at 100 %: no legacy workflow still running (visibility query), batch
   files cleaned (:func:`toolkit.parse.cleanup.cleanup_finished_files`), storage accounted.

An error mid-rollout (a server gone) rolls back like a failed gate; so does an interrupt (Ctrl-C, a
cancelled task), which then propagates. A rollback whose write fails, or whose flags do not read back
off, is the outcome ``rollback failed`` with what to do by hand, never "rolled back". Apart from an
interrupt, :func:`run_runbook` never raises: flags it cannot read are None in the result.

Every action, check and analysis is one row of one table, :attr:`RunbookResult.record`, which the
executed notebook keeps. ``dry_run`` reads everything and writes nothing (the rows say what would
change). ``restore_flags`` (for CI) puts the flags back as they were at the start, as a final row;
without it the flags stay where the runbook left them, which in production is the point.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pandas as pd
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from toolkit.parse import ParseClient
from toolkit.parse.batch_requests import delete_file_if_present
from toolkit.parse.cleanup import cleanup_finished_files
from toolkit.parse.models import ParseFile
from toolkit.parse.schema import SCHEMAS
from toolkit.parse.users import ParseUser
from toolkit.rollout import FLAGS_TTL_S, RolloutFlags, master_key_only, read_flags, write_flags
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.validation.canary import CanaryConfig, CanaryVerdict
from toolkit.validation.canary_window import judge_window, run_until_decided
from toolkit.validation.metrics import collect_batches
from toolkit.validation.traffic import TrafficPlan, generate_traffic

__all__ = [
    "DEFAULT_STAGES",
    "RECORD_COLUMNS",
    "InvalidRunbookConfig",
    "RunbookConfig",
    "RunbookResult",
    "preflight",
    "run_runbook",
]

DEFAULT_STAGES: tuple[int, ...] = (0, 10, 25, 50, 75, 100)
RECORD_COLUMNS = [
    "at",
    "phase",
    "stage",
    "step",
    "result",
    "detail",
    "score",
    "n_canary",
    "n_baseline",
    "flag_on",
    "flag_percent",
    # Each analysis: what its window could have detected, and the batches per path it still needed.
    "detectable_latency_ratio",
    "detectable_success_drop",
    "batches_needed",
]
Outcome = Literal["completed", "rolled back", "rollback failed", "halted", "preflight failed", "dry run"]
BY_HAND = "turn the rollout off by hand: `toolkit rollout off` and `toolkit rollout set --percent 0`"
_RPC_TIMEOUT = timedelta(seconds=10)
# The cleanup precondition: legacy workflows still in flight (Temporal visibility).
LEGACY_RUNNING_QUERY = 'WorkflowType="ProcessBatchMemoryWorkflow" AND ExecutionStatus="Running"'
# The plan's "Parse storage < 1 GB/day".
DAILY_STORAGE_TARGET_BYTES = 1_000_000_000


class InvalidRunbookConfig(ValueError):
    """Stages not rising within 0–100, negative soak, and the like."""


@dataclass(frozen=True)
class RunbookConfig:
    stages: tuple[int, ...] = DEFAULT_STAGES
    # How long each stage soaks (hours in production, seconds in CI); 0 = one analysis per stage.
    soak_s: float = 0.0
    # Pause between analyses within a soak.
    analysis_interval_s: float = 60.0
    # Failed analyses tolerated per stage (Argo's failureLimit): one more rolls back.
    failure_limit: int = 0
    dry_run: bool = False
    # Put the flags back as they were when done (CI). Production leaves them where the run ended.
    restore_flags: bool = False
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    # Traffic submitted before each analysis (local / staging); None = real users make it.
    traffic: TrafficPlan | None = None
    # After a flag change, every API process re-reads the flags within this time.
    settle_s: float = FLAGS_TTL_S
    cleanup: bool = True
    cleanup_older_than_days: float = 7.0
    # With traffic: rounds of traffic per analysis until the judge can decide, at most this many batches
    # per path (a bigger need halts the stage as "not enough data") and this many rounds.
    max_batches_per_path: int = 60
    max_rounds: int = 4

    def __post_init__(self) -> None:
        stages = list(self.stages)
        if not stages or any(not 0 <= p <= 100 for p in stages) or stages != sorted(set(stages)):
            raise InvalidRunbookConfig(f"stages must rise strictly within 0–100, got {self.stages}")
        if self.soak_s < 0 or self.analysis_interval_s < 0 or self.settle_s < 0 or self.failure_limit < 0:
            raise InvalidRunbookConfig("soak, interval, settle and failure limit must be >= 0")
        if self.traffic is not None and self.traffic.percent is not None:
            raise InvalidRunbookConfig("the runbook sets the flags itself: traffic.percent must be None")
        if self.max_batches_per_path < self.canary.min_samples or self.max_rounds < 1:
            raise InvalidRunbookConfig("max_batches_per_path must reach min_samples, max_rounds at least 1")


@dataclass
class RunbookResult:
    outcome: Outcome
    reason: str
    record: pd.DataFrame  # RECORD_COLUMNS
    verdicts: list[tuple[int, CanaryVerdict]]  # (stage, verdict) of every analysis
    flags_before: RolloutFlags | None  # None: Parse Config could not be read
    flags_after: RolloutFlags | None
    rollback_s: float | None = None  # decision to flag read back off

    def summary(self) -> dict[str, Any]:
        scores = [v.score for _, v in self.verdicts if v.score is not None]
        last = {stage: verdict for stage, verdict in self.verdicts}  # each stage's deciding analysis
        after = self.flags_after
        return {
            "runbook_outcome": self.outcome,
            "runbook_reason": self.reason,
            "stages_passed": sorted({s for s, v in self.verdicts if v.passed}),
            "analyses": len(self.verdicts),
            "lowest_score": min(scores) if scores else None,
            "batches_per_stage": {s: [v.n_canary, v.n_baseline] for s, v in last.items()},
            "detectable_latency_ratio_per_stage": {
                s: _rounded(v.detectable_latency_ratio, 3) for s, v in last.items()
            },
            "detectable_success_drop_per_stage": {
                s: _rounded(v.detectable_success_drop, 4) for s, v in last.items()
            },
            "rollback_s": self.rollback_s,
            "flags_after": "unreadable"
            if after is None
            else f"on={after.use_parse_batch_storage} percent={after.canary_percent}",
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None or math.isinf(value) else round(value, digits)


class _Record:
    """The one table: every step appends a row, with the flags as last read back."""

    def __init__(self, log: Callable[[str], None] | None) -> None:
        self.rows: list[dict[str, Any]] = []
        self.flags: RolloutFlags | None = None
        self._log = log

    def add(
        self, phase: str, step: str, result: str, detail: str = "", stage: int | None = None, **extra: Any
    ):
        row = {
            "at": datetime.now(UTC),
            "phase": phase,
            "stage": stage,
            "step": step,
            "result": result,
            "detail": detail,
            "score": extra.get("score"),
            "n_canary": extra.get("n_canary"),
            "n_baseline": extra.get("n_baseline"),
            "flag_on": self.flags.use_parse_batch_storage if self.flags else None,
            "flag_percent": self.flags.canary_percent if self.flags else None,
            "detectable_latency_ratio": extra.get("detectable_latency_ratio"),
            "detectable_success_drop": extra.get("detectable_success_drop"),
            "batches_needed": extra.get("batches_needed"),
        }
        self.rows.append(row)
        if self._log is not None:
            self._log(f"[{phase}] {step}: {result} {detail}".rstrip())

    def log(self, line: str) -> None:
        """Progress that is not a row of the record (traffic rounds)."""
        if self._log is not None:
            self._log(line)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=RECORD_COLUMNS)


# ---- preflight -----------------------------------------------------------------------------------
async def _check_schema(parse: ParseClient) -> tuple[bool, str]:
    missing: list[str] = []
    for class_name, spec in SCHEMAS.items():
        try:
            live = await parse.request("GET", f"schemas/{class_name}", master=True)
        except Exception as exc:  # noqa: BLE001 - any failure here means "not migrated", said in the detail
            missing.append(f"{class_name} ({type(exc).__name__})")
            continue
        fields = set(spec["fields"]) - set(live.get("fields") or {})
        indexes = set(spec["indexes"]) - set(live.get("indexes") or {})
        missing += [f"{class_name}.{name}" for name in sorted(fields | indexes)]
    if missing:
        return False, "missing: " + ", ".join(missing) + " (run `toolkit migrate`)"
    return True, f"classes {', '.join(SCHEMAS)} with all fields and indexes"


async def _check_pollers(settings: Settings) -> tuple[bool, str]:
    client = await connect(settings)
    counts = {}
    for name, kind in (
        ("workflow", TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
        ("activity", TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
    ):
        answer = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=settings.temporal_namespace,
                task_queue=TaskQueue(name=settings.temporal_task_queue),
                task_queue_type=kind,
            ),
            timeout=_RPC_TIMEOUT,
        )
        counts[name] = len(answer.pollers)
    ok = counts["workflow"] > 0 and counts["activity"] > 0
    # Both workflow types (legacy and reference) are served from this one queue by every worker;
    # DescribeTaskQueue shows pollers, not the types a poller registered.
    return ok, (
        f"task queue {settings.temporal_task_queue!r}: {counts['workflow']} workflow pollers, "
        f"{counts['activity']} activity pollers (one queue serves both workflow types)"
    )


async def _check_file_round_trip(parse: ParseClient) -> tuple[bool, str]:
    payload = secrets.token_bytes(64)
    answer = await parse.upload_file(
        f"preflight-{secrets.token_hex(6)}.bin", payload, "application/octet-stream", master=True
    )
    probe = ParseFile(name=answer["name"], url=answer.get("url"))
    try:
        same = await parse.download(probe.url or "") == payload if probe.url else False
    finally:
        deleted = await delete_file_if_present(parse, probe)
    return (
        same and deleted,
        f"uploaded 64 B as {probe.name}, read back {'equal' if same else 'DIFFERENT'}, "
        + ("deleted" if deleted else "NOT deleted"),
    )


async def preflight(
    settings: Settings, parse: ParseClient, record: _Record, *, dry_run: bool
) -> tuple[bool, RolloutFlags | None]:
    """Run every check, recording each; True when all passed. Writes nothing in a dry run."""
    ok = True

    async def check(step: str, probe: Callable[[], Any]) -> Any:
        nonlocal ok
        try:
            passed, detail = await probe()
        except Exception as exc:  # noqa: BLE001 - a check that cannot run is a failed check, recorded
            passed, detail = False, f"{type(exc).__name__}: {exc}"
        ok = ok and passed
        record.add("preflight", step, "ok" if passed else "fail", detail)

    await check("schema migrated", lambda: _check_schema(parse))
    flags: RolloutFlags | None = None

    async def readable() -> tuple[bool, str]:
        nonlocal flags
        flags = await read_flags(parse, settings)
        record.flags = flags
        hidden = await master_key_only(parse)
        public = [k for k, v in hidden.items() if not v]
        detail = f"on={flags.use_parse_batch_storage} percent={flags.canary_percent}"
        if flags.defaulted:
            detail += f"; missing in Parse Config: {', '.join(flags.defaulted)}"
        if public:
            detail += f"; NOT master-key-only: {', '.join(public)}"
        return not public and not flags.defaulted, detail

    await check("flags readable", readable)
    if dry_run:
        record.add("preflight", "flags writable", "dry-run", "would write the current values back")
        record.add("preflight", "Parse file upload and delete", "dry-run", "would upload and delete 64 B")
    else:

        async def writable() -> tuple[bool, str]:
            if flags is None:
                return False, "flags unreadable"
            back = await write_flags(
                parse, settings, enabled=flags.use_parse_batch_storage, percent=flags.canary_percent
            )
            return back == flags, "wrote the current values back and read them again"

        await check("flags writable", writable)
        await check("Parse file upload and delete", lambda: _check_file_round_trip(parse))
    await check("worker polling", lambda: _check_pollers(settings))
    return ok, flags


# ---- the gate ------------------------------------------------------------------------------------
async def _analyse(
    settings: Settings,
    config: RunbookConfig,
    record: _Record,
    percent: int,
    stage_start: datetime,
    run_start: datetime,
    users: list[ParseUser],
) -> CanaryVerdict:
    """One analysis of the stage: with traffic, rounds of it until the judge can decide (or its cap)."""
    if config.traffic is None:
        _, verdict = await judge_window(
            settings, config.canary, stage_start, datetime.now(UTC), baseline_since=run_start
        )
        return verdict
    window = await run_until_decided(
        settings,
        config.canary,
        config.traffic,
        max_batches_per_path=config.max_batches_per_path,
        max_rounds=config.max_rounds,
        users=users,
        baseline_since=run_start,
        log=record.log,
    )
    rounds = window.rounds
    record.add(
        "soak",
        "traffic",
        "ok",
        f"{int(rounds['submitted'].sum())} batches in {len(rounds)} round(s) "
        f"({', '.join(str(n) for n in rounds['submitted'])}); {window.stopped}",
        stage=percent,
    )
    return window.verdict


# ---- the run -------------------------------------------------------------------------------------
async def _set_stage(
    parse: ParseClient, settings: Settings, record: _Record, percent: int, dry_run: bool
) -> bool:
    """Set the stage's flags and read them back; False when they do not read back as set."""
    before = record.flags
    if dry_run:
        record.add(
            "stage",
            "set flags",
            "dry-run",
            f"would set on=True percent={percent} (now on={before and before.use_parse_batch_storage} "
            f"percent={before and before.canary_percent})",
            stage=percent,
        )
        return True
    record.flags = await write_flags(parse, settings, enabled=True, percent=percent)
    ok = record.flags.use_parse_batch_storage and record.flags.canary_percent == percent
    record.add(
        "stage",
        "set flags",
        "ok" if ok else "fail",
        f"read back on={record.flags.use_parse_batch_storage} percent={record.flags.canary_percent}"
        + ("" if ok else f", not on at {percent}%"),
        stage=percent,
    )
    return ok


async def _roll_back(
    parse: ParseClient, settings: Settings, record: _Record, stage: int | None, why: str
) -> tuple[float, bool]:
    """Flag off and percent 0, read back: (seconds from the decision, whether it read back so).

    Never raises: a write that fails is recorded as a failed rollback."""
    started = time.perf_counter()
    try:
        record.flags = await write_flags(parse, settings, enabled=False, percent=0)
    except Exception as exc:  # noqa: BLE001 - recorded; the outcome says the rollback failed
        seconds = time.perf_counter() - started
        record.add(
            "rollback",
            "flag off",
            "fail",
            f"could not write the flags ({type(exc).__name__}: {exc}) {seconds:.2f} s after the decision; "
            f"{BY_HAND}. Why: {why}",
            stage=stage,
        )
        return seconds, False
    seconds = time.perf_counter() - started
    off = not record.flags.use_parse_batch_storage and record.flags.canary_percent == 0
    record.add(
        "rollback",
        "flag off",
        "ok" if off else "fail",
        f"read back on={record.flags.use_parse_batch_storage} percent={record.flags.canary_percent} "
        f"{seconds:.2f} s after the decision (API processes follow within {FLAGS_TTL_S:g} s). Why: {why}",
        stage=stage,
    )
    return seconds, off


def _analysis_row(record: _Record, percent: int, verdict: CanaryVerdict) -> str:
    reason = "; ".join(verdict.reasons) or "all metrics and gates pass"
    record.add(
        "gate",
        "canary analysis",
        verdict.verdict,
        f"{reason}. {verdict.what_it_could_detect()}",
        stage=percent,
        score=None if verdict.score is None else round(verdict.score, 1),
        n_canary=verdict.n_canary,
        n_baseline=verdict.n_baseline,
        detectable_latency_ratio=_rounded(verdict.detectable_latency_ratio, 3),
        detectable_success_drop=_rounded(verdict.detectable_success_drop, 4),
        batches_needed=verdict.batches_needed,
    )
    return reason


async def _soak(
    settings: Settings,
    config: RunbookConfig,
    record: _Record,
    percent: int,
    run_start: datetime,
    users: list[ParseUser],
    verdicts: list[tuple[int, CanaryVerdict]],
) -> tuple[str, str]:
    """Analyses over the soak; returns ("pass"|"fail"|"halt", reason)."""
    stage_start = datetime.now(UTC)
    deadline = time.monotonic() + config.soak_s
    failures = 0
    last: CanaryVerdict | None = None
    while True:
        if percent == 0:
            if config.traffic is not None:
                await generate_traffic(settings, config.traffic, users=users, progress=record.log)
            window = await collect_batches(settings, stage_start, datetime.now(UTC), with_temporal=False)
            record.add(
                "soak",
                "baseline collected",
                "ok",
                f"{len(window)} batches at 0% (the baseline for later stages); nothing to judge",
                stage=percent,
                n_baseline=int((window["storage"] == "legacy").sum()),
            )
            return "pass", "baseline only"
        last = await _analyse(settings, config, record, percent, stage_start, run_start, users)
        verdicts.append((percent, last))
        reason = _analysis_row(record, percent, last)
        if last.verdict == "fail":
            failures += 1
            if failures > config.failure_limit:
                return "fail", f"gate failed at {percent}% ({failures} failed analyses): {reason}"
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(config.analysis_interval_s, max(0.0, deadline - time.monotonic())))
    if last is None or not last.passed:
        verdict = last.verdict if last else "no analysis"
        return "halt", f"soak at {percent}% ended with '{verdict}', not a pass: needs a human"
    return "pass", f"passed at {percent}% (score {last.score:.0f})"


async def _cleanup(
    settings: Settings, parse: ParseClient, config: RunbookConfig, record: _Record, run_start: datetime
) -> None:
    temporal = await connect(settings)
    running = (await temporal.count_workflows(LEGACY_RUNNING_QUERY, rpc_timeout=_RPC_TIMEOUT)).count
    record.add(
        "cleanup",
        "no legacy workflow running",
        "ok" if running == 0 else "fail",
        f"{running} runs match {LEGACY_RUNNING_QUERY}",
    )
    report = await cleanup_finished_files(
        parse, settings, older_than_days=config.cleanup_older_than_days, dry_run=config.dry_run
    )
    verb = "would delete" if config.dry_run else "deleted"
    record.add(
        "cleanup",
        "batch files cleaned",
        ("dry-run" if config.dry_run else "ok") if not report.errors else "fail",
        f"{verb} {len(report.files_deleted)} files of requests finished more than "
        f"{config.cleanup_older_than_days:g} days ago and {len(report.orphans_deleted)} orphans; "
        f"{len(report.errors)} errors",
    )
    # What this run stored in Parse Files, scaled to a day, against the plan's daily budget.
    until = datetime.now(UTC)
    batches = await collect_batches(settings, run_start, until, with_temporal=False)
    reference = batches[batches["storage"] == "reference"]
    stored = int(pd.to_numeric(reference["compressed_bytes"]).fillna(0).sum())
    hours = max((until - run_start).total_seconds() / 3600, 1 / 60)
    per_day = stored * 24 / hours
    record.add(
        "cleanup",
        "storage accounted",
        "ok" if per_day < DAILY_STORAGE_TARGET_BYTES else "fail",
        f"{len(reference)} reference batches stored {stored:,} B compressed "
        f"in {hours * 60:.1f} min, {per_day:,.0f} B/day at this rate "
        f"(target < {DAILY_STORAGE_TARGET_BYTES:,} B/day)",
    )


async def _read_flags_or_none(parse: ParseClient, settings: Settings, record: _Record) -> RolloutFlags | None:
    try:
        return await read_flags(parse, settings)
    except Exception as exc:  # noqa: BLE001 - recorded; the result carries None
        record.add("end", "read flags", "fail", f"could not read the flags: {type(exc).__name__}: {exc}")
        return None


async def _roll_out(
    settings: Settings,
    parse: ParseClient,
    config: RunbookConfig,
    record: _Record,
    run_start: datetime,
    verdicts: list[tuple[int, CanaryVerdict]],
) -> tuple[Outcome, str, float | None]:
    """The stages, live: (outcome, reason, rollback seconds). An interrupt rolls back, then propagates."""
    users: list[ParseUser] = []

    async def rolled_back(stage: int | None, why: str) -> tuple[Outcome, str, float | None]:
        seconds, off = await _roll_back(parse, settings, record, stage, why)
        if off:
            return "rolled back", why, seconds
        return "rollback failed", f"{why}; the rollback did not take: {BY_HAND}", None

    percent: int | None = None
    try:
        for percent in config.stages:
            if not await _set_stage(parse, settings, record, percent, dry_run=False):
                flags = record.flags
                return await rolled_back(
                    percent,
                    f"flags read back on={flags and flags.use_parse_batch_storage} "
                    f"percent={flags and flags.canary_percent}, not on at {percent}% (another writer?): "
                    "stopped before the soak",
                )
            await asyncio.sleep(config.settle_s)
            result, why = await _soak(settings, config, record, percent, run_start, users, verdicts)
            if result == "fail":
                return await rolled_back(percent, why)
            if result == "halt":
                record.add("stage", "halt", "halted", why, stage=percent)
                return "halted", why, None
            record.add("stage", "promote", "ok", why, stage=percent)
    except Exception as exc:
        # An error mid-rollout (a server gone) is a failure like a failed gate: flag off.
        why = f"runbook error: {type(exc).__name__}: {exc}"
        record.add("error", "exception", "fail", why, stage=percent)
        return await rolled_back(percent, why)
    except BaseException as exc:
        # Ctrl-C or a cancelled task mid-soak: the flag must not stay on behind the operator's back.
        record.add("error", "interrupted", "fail", f"{type(exc).__name__} at {percent}%", stage=percent)
        await _roll_back(parse, settings, record, percent, f"interrupted ({type(exc).__name__})")
        raise
    return "completed", "every stage passed its gate", None


async def run_runbook(
    settings: Settings, config: RunbookConfig, *, log: Callable[[str], None] | None = None
) -> RunbookResult:
    """Execute the runbook against the stack ``settings`` names.

    Never raises for a failed gate, a server gone or a failed rollback: they are outcomes in the
    record. An interrupt (Ctrl-C, a cancelled task) rolls back first, then propagates.
    """
    record = _Record(log)
    verdicts: list[tuple[int, CanaryVerdict]] = []
    run_start = datetime.now(UTC)
    rollback_s: float | None = None
    async with ParseClient(settings) as parse:
        ok, flags_before = await preflight(settings, parse, record, dry_run=config.dry_run)
        if flags_before is None:
            flags_before = await _read_flags_or_none(parse, settings, record)
        outcome: Outcome
        if not ok:
            outcome, reason = "preflight failed", "a preflight check failed; nothing was changed"
        elif config.dry_run:
            for percent in config.stages:
                await _set_stage(parse, settings, record, percent, dry_run=True)
                record.add(
                    "soak",
                    "gate",
                    "dry-run",
                    f"would soak {config.soak_s:g} s, judging every {config.analysis_interval_s:g} s, "
                    f"rolling back after {config.failure_limit + 1} failed analyses",
                    stage=percent,
                )
            if config.cleanup:
                await _checked_cleanup(settings, parse, config, record, run_start)
            outcome, reason = "dry run", "nothing was changed"
        else:
            outcome, reason, rollback_s = await _roll_out(
                settings, parse, config, record, run_start, verdicts
            )
            if outcome == "completed" and config.cleanup:
                # At 100 % a failed cleanup check is work left to do, not a reason to roll back.
                await _checked_cleanup(settings, parse, config, record, run_start)
                failed = record.frame().query("phase == 'cleanup' and result == 'fail'")["step"].tolist()
                if failed:
                    reason = f"every stage passed its gate; cleanup left to do: {', '.join(failed)}"
        if config.restore_flags and not config.dry_run and flags_before is not None:
            try:
                record.flags = await write_flags(
                    parse,
                    settings,
                    enabled=flags_before.use_parse_batch_storage,
                    percent=flags_before.canary_percent,
                )
                record.add(
                    "restore", "flags restored", "ok", "restore_flags=True (CI): flags put back as found"
                )
            except Exception as exc:  # noqa: BLE001 - recorded; flags_after shows what stands
                record.add("restore", "flags restored", "fail", f"{type(exc).__name__}: {exc}")
        flags_after = await _read_flags_or_none(parse, settings, record)
    record.flags = flags_after
    record.add("end", "outcome", outcome, reason)
    return RunbookResult(outcome, reason, record.frame(), verdicts, flags_before, flags_after, rollback_s)


async def _checked_cleanup(
    settings: Settings, parse: ParseClient, config: RunbookConfig, record: _Record, run_start: datetime
) -> None:
    try:
        await _cleanup(settings, parse, config, record, run_start)
    except Exception as exc:  # noqa: BLE001 - recorded; the rollout itself is done
        record.add("cleanup", "exception", "fail", f"{type(exc).__name__}: {exc}")
