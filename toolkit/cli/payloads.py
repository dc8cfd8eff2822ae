"""``toolkit payloads cleanup``: delete Temporal payloads kept in Parse Files that no retained workflow needs.

The rule is :func:`toolkit.temporal.payload_cleanup.cleanup_stored_payloads`'s; this module only reads the
arguments and prints the report.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta

from toolkit.parse import ParseClient
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.temporal.payload_cleanup import PayloadCleanupReport, cleanup_stored_payloads


def _print_report(report: PayloadCleanupReport) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    hours = report.retention.total_seconds() / 3600
    print(
        f"payloads last stored over {max(report.retention, report.min_age).total_seconds() / 3600:g} h ago: "
        f"{report.examined}; {verb} {len(report.deleted)}, kept {len(report.kept_in_use)} still needed "
        f"by an open workflow or one closed within the retention ({hours:g} h)"
    )
    for digest in report.deleted:
        print(f"  {digest}")
    for error in report.errors:
        print(f"error: {error}")


def payloads_command(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 1 if any payload could not be judged or deleted."""
    if args.min_age_hours < 0 or (args.retention_hours is not None and args.retention_hours < 0):
        print("toolkit payloads cleanup: hours must be >= 0")
        return 2

    async def run() -> PayloadCleanupReport:
        temporal = await connect(settings)
        async with ParseClient(settings) as parse:
            return await cleanup_stored_payloads(
                temporal,
                parse,
                retention=None if args.retention_hours is None else timedelta(hours=args.retention_hours),
                min_age=timedelta(hours=args.min_age_hours),
                dry_run=args.dry_run,
            )

    report = asyncio.run(run())
    _print_report(report)
    return 1 if report.errors else 0
