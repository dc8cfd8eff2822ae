"""``toolkit submit`` and ``toolkit status``: the batch API from the command line, as the local user."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

import httpx

from toolkit.parse.errors import ParseError
from toolkit.parse.models import FINISHED_STATUSES
from toolkit.settings import Settings
from toolkit.validation.batch_api import (
    ApiCallFailed,
    BatchWaitTimeout,
    LocalUserLost,
    get_status,
    local_session,
    submit_batch,
    wait_for_batch,
)


class _ProgressBar:
    """``\\r[#####.....]  50% 500/1000 processing`` on stderr; a newline once finished."""

    def __init__(self, width: int = 30) -> None:
        self.width = width

    def __call__(self, status: Mapping[str, Any]) -> None:
        total = int(status.get("total_memories") or 0)
        done = int(status.get("processed") or 0)
        filled = int(self.width * done / total) if total else 0
        bar = "#" * filled + "." * (self.width - filled)
        line = f"\r[{bar}] {status.get('progress_percent', 0):5.1f}% {done}/{total} {status.get('status')}"
        if status.get("failed"):
            line += f" ({status['failed']} failed)"
        sys.stderr.write(line + "   ")
        if status.get("status") in FINISHED_STATUSES:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _final_exit_code(status: Mapping[str, Any]) -> int:
    return 0 if status.get("status") == "completed" else 1


def _wait_and_print(settings: Settings, batch_id: str, token: str, timeout_s: float) -> int:
    try:
        final = wait_for_batch(settings, batch_id, token, timeout_s=timeout_s, on_progress=_ProgressBar())
    except BatchWaitTimeout as exc:
        sys.stderr.write("\n")
        print(json.dumps(exc.last, indent=2))
        print(f"toolkit: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(final, indent=2))
    return _final_exit_code(final)


def submit_command(args: argparse.Namespace, settings: Settings) -> int:
    """``toolkit submit --memories N [--workload chitchat|synthetic] [--wait]``."""
    from toolkit.validation.workloads import make_memories

    if args.memories < 1:
        print("toolkit submit: --memories must be at least 1", file=sys.stderr)
        return 2
    memories = make_memories(args.workload, args.memories)
    try:
        token = local_session(settings)
        accepted = submit_batch(
            settings,
            memories=memories,
            session_token=token,
            idempotency_key=args.idempotency_key,
            webhook_url=args.webhook_url,
        )
    except (ApiCallFailed, LocalUserLost, ParseError, httpx.HTTPError) as exc:
        print(f"toolkit submit: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(accepted, indent=2))
    if not args.wait:
        return 0
    try:
        return _wait_and_print(settings, accepted["batch_id"], token, args.timeout)
    except (ApiCallFailed, httpx.HTTPError) as exc:
        print(f"toolkit submit: {exc}", file=sys.stderr)
        return 1


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    """``toolkit status BATCH_ID [--wait]`` (batches of the local user)."""
    try:
        token = local_session(settings)
        if args.wait:
            return _wait_and_print(settings, args.batch_id, token, args.timeout)
        status = get_status(settings, args.batch_id, token)
    except (ApiCallFailed, LocalUserLost, ParseError, httpx.HTTPError) as exc:
        print(f"toolkit status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2))
    return 0
