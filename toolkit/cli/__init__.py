"""The ``toolkit`` command line. Each subcommand builds the settings once and calls into the package.

All argument parsing and printing lives in this package (one module per command group); the library
modules it calls neither print nor read ``argv``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from toolkit.settings import Settings, load_settings


def _stack(args: argparse.Namespace, settings: Settings) -> int:
    from toolkit import stack

    if args.action == "up":
        stack.up(settings)
        print(f"stack is up; settings in {settings.stack_env_file}")
        print(f"Temporal UI: {settings.temporal_ui}")
        return 0
    if args.action == "down":
        stack.down(settings)
        return 0
    rows = stack.status(settings)
    print(f"{'part':<9} {'pid':>7}  {'health':<8} url")
    for row in rows:
        health = "healthy" if row.healthy else ("running" if row.pid else "stopped")
        metrics = f"  metrics {row.metrics_url}" if row.metrics_url else ""
        print(f"{row.name:<9} {row.pid or '-':>7}  {health:<8} {row.url}{metrics}")
    return 0 if all(r.healthy for r in rows) else 1


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from toolkit.parse.schema import migrate_sync

    changes = migrate_sync(settings)
    print("\n".join(changes) if changes else "schema up to date: nothing to change")
    return 0


def _api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from toolkit.api.app import create_app

    # uvloop and httptools, named so a missing one fails here rather than falling back to the slower
    # pure-Python pair unnoticed (issue 19).
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
    )
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    import uvloop

    from toolkit.temporal.worker import run_worker

    ready = Path(args.ready_file) if args.ready_file else None
    try:
        # uvloop: the activities' Parse round trips cost less event-loop CPU (issue 19). Workflows run
        # on the SDK's own deterministic loop either way.
        uvloop.run(run_worker(settings, ready_file=ready))
    except KeyboardInterrupt:
        pass
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    """The main job on the local stack (``make run``)."""
    from toolkit.cli.run import run_main_job

    return run_main_job(settings)


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    from toolkit.cli.submit import submit_command

    return submit_command(args, settings)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from toolkit.cli.submit import status_command

    return status_command(args, settings)


def _rollout(args: argparse.Namespace, settings: Settings) -> int:
    from toolkit.cli.rollout import rollout_command

    return rollout_command(args, settings)


def _cleanup(args: argparse.Namespace, settings: Settings) -> int:
    from toolkit.cli.cleanup import cleanup_command

    return cleanup_command(args, settings)


def _payloads(args: argparse.Namespace, settings: Settings) -> int:
    from toolkit.cli.payloads import payloads_command

    return payloads_command(args, settings)


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from toolkit.cli.bench import bench_command

    return bench_command(args, settings)


def _scale_out(args: argparse.Namespace, settings: Settings) -> int:
    from toolkit.cli.scale_out import scale_out_command

    return scale_out_command(args, settings)


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    from toolkit.cli.audit import audit_command

    return audit_command(args, settings)


def _saturation(args: argparse.Namespace, settings: Settings) -> int:
    from toolkit.cli.saturation import saturation_command

    return saturation_command(args, settings)


def _notebooks(args: argparse.Namespace, settings: Settings) -> int:
    from toolkit.cli.notebooks import notebooks_command

    return notebooks_command(args, settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolkit", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="start, stop or inspect the local stack")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=_stack)

    p = sub.add_parser("run", help="the main job: validate the migration on the running stack")
    p.set_defaults(func=_run)

    p = sub.add_parser("migrate", help="create or update the Parse classes, indexes and Config flags")
    p.set_defaults(func=_migrate)

    p = sub.add_parser("api", help="serve the batch memory API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_api)

    p = sub.add_parser("submit", help="submit a batch through the API as the local user")
    p.add_argument("--memories", type=int, required=True, help="how many memories")
    p.add_argument("--workload", choices=["chitchat", "synthetic"], default="chitchat")
    p.add_argument("--wait", action="store_true", help="show progress until the batch finishes")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait with --wait")
    p.add_argument("--idempotency-key")
    p.add_argument("--webhook-url")
    p.set_defaults(func=_submit)

    p = sub.add_parser("status", help="show a batch's status (local user)")
    p.add_argument("batch_id")
    p.add_argument("--wait", action="store_true", help="show progress until the batch finishes")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.set_defaults(func=_status)

    p = sub.add_parser("rollout", help="show or change the live rollout flags (Parse Config)")
    p.add_argument("action", choices=["status", "set", "on", "off"])
    p.add_argument("--percent", type=int, help="canary percent 0-100 (required for set, optional for on)")
    p.add_argument("--user", action="append", help="also show this user id's bucket and path")
    p.set_defaults(func=_rollout)

    p = sub.add_parser("cleanup", help="delete batch files of finished requests, and orphan files")
    p.add_argument(
        "--older-than",
        type=float,
        required=True,
        metavar="DAYS",
        help="only requests completed more than DAYS ago (0 = every finished request)",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be deleted; delete nothing")
    p.set_defaults(func=_cleanup)

    p = sub.add_parser("bench", help="both paths against a direct-write baseline, measured in one run")
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[10, 100, 1000], help="memories per batch, up to 100000"
    )
    p.add_argument(
        "--fixed-cost-runs",
        type=int,
        default=10,
        help="10-memory batches submitted through the API to break the fixed cost down (0: skip)",
    )
    p.add_argument(
        "--paths",
        nargs="+",
        choices=["reference", "legacy"],
        default=["reference", "legacy"],
        help="paths beside the baseline (the legacy fan-out takes minutes past 1,000 memories)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each size this many times (1-10), baseline and paths taking turns, and print "
        "each ratio's median and spread",
    )
    p.add_argument("--workload", choices=["chitchat", "synthetic"], default="chitchat")
    p.add_argument(
        "--writer",
        action="store_true",
        help="measure the memory writer alone instead (no Temporal, no API): each size written once per "
        "--writer-concurrency, straight to Parse, and deleted again",
    )
    p.add_argument(
        "--writer-concurrency",
        type=int,
        nargs="+",
        default=[1, 4],
        help="with --writer: /parse/batch calls in flight, each compared with the first "
        "(memories per call: WRITER_BATCH_SIZE)",
    )
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "scale-out", help="the same batches on 1 and N workers: work per worker, speedup, CPU per process"
    )
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    p.add_argument("--batches", type=int, default=1, help="batches submitted at once per worker count")
    p.add_argument("--memories", type=int, default=20_000, help="memories per batch (chunked past 5,000)")
    p.add_argument(
        "--worker-slots",
        type=int,
        help="activities each worker may run at once (WORKER_MAX_CONCURRENT_ACTIVITIES; default: the "
        "setting). A worker with free slots is handed the chunks its own workflow task schedules, so "
        "cap it (e.g. 2) to see one batch's chunks spread over the workers",
    )
    p.add_argument("--workload", choices=["chitchat", "synthetic"], default="chitchat")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    p.set_defaults(func=_scale_out)

    p = sub.add_parser("payloads", help="Temporal payloads kept in Parse Files (external storage)")
    p.add_argument("action", choices=["cleanup"])
    p.add_argument(
        "--retention-hours",
        type=float,
        help="how long closed workflows keep their payloads (default: the namespace's retention)",
    )
    p.add_argument(
        "--min-age-hours", type=float, default=1.0, help="never delete a payload stored more recently"
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be deleted; delete nothing")
    p.set_defaults(func=_payloads)

    p = sub.add_parser("worker", help="run a Temporal worker for the batch workflows")
    p.add_argument("--ready-file", help="write the pid here once connected (used by the stack)")
    p.set_defaults(func=_worker)

    from toolkit.cli.audit import add_parser as add_audit_parser
    from toolkit.cli.notebooks import add_parser as add_notebooks_parser
    from toolkit.cli.saturation import add_parser as add_saturation_parser

    add_audit_parser(sub, _audit)
    add_notebooks_parser(sub, _notebooks)
    add_saturation_parser(sub, _saturation)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings()
    except ValueError as exc:
        print(f"toolkit: configuration error: {exc}", file=sys.stderr)
        return 2
    from toolkit.parse.errors import ParseError
    from toolkit.stack import StackError

    try:
        return int(args.func(args, settings) or 0)
    except (StackError, ParseError) as exc:
        print(f"toolkit: {exc}", file=sys.stderr)
        return 1
