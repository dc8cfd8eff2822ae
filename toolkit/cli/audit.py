"""``toolkit audit``: which workflow types of a namespace are near Temporal's payload and history limits.

Read-only. It reads the namespace of the settings (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, TLS or
``TEMPORAL_API_KEY``), lists the runs started in the window and fetches the ``--top`` largest histories per
workflow type (:func:`toolkit.validation.audit.audit_namespace`). Exit 0 with a table (or "nothing to
audit"), 1 when a type is at risk and ``--fail-at-risk`` is given, 2 when the namespace cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from toolkit.settings import Settings


def _since(text: str) -> datetime:
    """``24h``, ``7d``, ``90m`` back from now, or an ISO timestamp (UTC unless it says otherwise)."""
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: float(text[:-1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (24h, 7d, 90m) or an ISO time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _progress() -> Callable[[str, int, int | None], None]:
    def show(stage: str, done: int, total: int | None) -> None:
        of = f"/{total:,}" if total is not None else ""
        end = "\n" if total is not None and done >= total else ""
        print(f"\r{stage}: {done:,}{of}", end=end, file=sys.stderr, flush=True)

    return show


def audit_command(args: argparse.Namespace, settings: Settings) -> NoReturn:
    """Print the audit and end the process (see :func:`_exit`)."""
    _exit(_audit(args, settings))


def _exit(code: int) -> NoReturn:
    # The SDK's core may still release a thread after the event loop has closed (after a failed TLS connect,
    # measured 1 run in 12 here), which aborts the interpreter's finalisation with "Fatal Python error:
    # PyGILState_Release" (temporalio/sdk-python issue 300). The audit has nothing left to clean up: end here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    import pandas as pd

    from toolkit.validation.audit import AuditError, AuditWindow, audit_namespace, connect_for_audit

    async def run() -> Any:
        window = AuditWindow(args.since, args.until or datetime.now(UTC), args.query or "")
        client = await connect_for_audit(settings)
        return await audit_namespace(
            client, settings, window, top_n=args.top, threshold=args.threshold, progress=_progress()
        )

    try:
        report = asyncio.run(run())
    except AuditError as exc:
        print(f"toolkit audit: {exc}", file=sys.stderr)
        return 2
    print(report.message())
    if report.nothing_to_audit:
        return 0
    columns = [
        "workflow_type",
        "runs",
        "fetched",
        "history_bytes_p50",
        "history_bytes_p95",
        "history_bytes_max",
        "history_events_max",
        "largest_workflow_input",
        "largest_activity_input",
        "largest_activity_result",
        "largest_request",
        "ext_moved_pct_median",
        "verdict",
    ]
    with pd.option_context(
        "display.width", 250, "display.max_columns", 30, "display.float_format", "{:,.0f}".format
    ):
        print(report.types[columns].to_string(index=False))
        print()
        print(report.headroom.to_string(index=False))
    print()
    print("\n".join(report.verdicts))
    at_risk = (report.types.verdict == "at risk").any()
    return 1 if at_risk and args.fail_at_risk else 0


def add_parser(sub: argparse._SubParsersAction, func: Callable[..., int]) -> None:
    p = sub.add_parser(
        "audit", help="which workflow types of a namespace are near Temporal's limits (read-only)"
    )
    p.add_argument(
        "--since", type=_since, default="24h", help="runs started since: 24h, 7d, 90m or an ISO time (24h)"
    )
    p.add_argument("--until", type=_since, help="runs started before (default: now)")
    p.add_argument("--query", help="an extra visibility filter, ANDed: 'TaskQueue = \"batch-memory\"'")
    p.add_argument(
        "--top", type=int, default=10, help="histories fetched per workflow type, largest first (10)"
    )
    p.add_argument(
        "--threshold",
        type=int,
        help="external-storage what-if: payloads of at least this many bytes move out "
        "(default TEMPORAL_EXTERNAL_STORAGE_THRESHOLD)",
    )
    p.add_argument("--fail-at-risk", action="store_true", help="exit 1 when a workflow type is at risk")
    p.set_defaults(func=func)
