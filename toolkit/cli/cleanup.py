"""``toolkit cleanup --older-than DAYS [--dry-run]``: delete batch files of finished requests, and orphans."""

from __future__ import annotations

import argparse
import asyncio

from toolkit.parse import ParseClient
from toolkit.parse.cleanup import CleanupReport, cleanup_finished_files
from toolkit.settings import Settings


def _print_report(report: CleanupReport) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    span = (
        "all finished requests"
        if report.older_than_days == 0
        else (f"requests finished more than {report.older_than_days:g} days ago")
    )
    print(f"files of {span}: {report.finished_requests_matched} matched, {verb} {len(report.files_deleted)}")
    for name in report.files_deleted:
        print(f"  {name}")
    if report.files_dir is None:
        print("orphan files: no local files directory (not a local stack); skipped")
    else:
        print(
            f"orphan files in {report.files_dir}: {verb} {len(report.orphans_deleted)}, "
            f"kept {report.referenced_files_kept} referenced, {report.recent_files_kept} recent and "
            f"{report.uploading_files_kept} of uploads in progress"
        )
        for name in report.orphans_deleted:
            print(f"  {name}")
    for error in report.errors:
        print(f"error: {error}")


def cleanup_command(args: argparse.Namespace, settings: Settings) -> int:
    """``toolkit cleanup --older-than DAYS [--dry-run]``. Exit 1 if any file could not be deleted."""

    async def run() -> CleanupReport:
        async with ParseClient(settings) as client:
            return await cleanup_finished_files(
                client, settings, older_than_days=args.older_than, dry_run=args.dry_run
            )

    report = asyncio.run(run())
    _print_report(report)
    return 1 if report.errors else 0
