"""``toolkit rollout status | set --percent N | on [--percent N] | off``: show or change the live flags."""

from __future__ import annotations

import argparse
import asyncio
import sys

from toolkit.parse import ParseClient
from toolkit.rollout import (
    FLAG_KEY,
    FLAGS_TTL_S,
    PERCENT_KEY,
    InvalidPercent,
    RolloutFlags,
    canary_bucket,
    choose_storage,
    master_key_only,
    read_flags,
    validate_percent,
    write_flags,
)
from toolkit.settings import Settings


def _describe(flags: RolloutFlags, protected: dict[str, bool]) -> list[str]:
    if not flags.use_parse_batch_storage:
        effect = "every user on the legacy path (rolled back)"
    elif flags.canary_percent >= 100:
        effect = "every user on the reference (Parse File) path"
    else:
        effect = f"{flags.canary_percent}% of users on the reference path, the rest on legacy"
    lines = [
        f"{FLAG_KEY}={str(flags.use_parse_batch_storage).lower()}",
        f"{PERCENT_KEY}={flags.canary_percent}",
        f"effect: {effect} (API processes pick this up within {FLAGS_TTL_S:g} s)",
    ]
    if flags.defaulted:
        lines.append(f"from settings defaults (missing in Parse Config): {', '.join(flags.defaulted)}")
    public = [key for key, hidden in protected.items() if not hidden]
    if public:
        lines.append(f"WARNING: not master-key-only, readable by any client: {', '.join(public)}")
    return lines


async def _rollout(args: argparse.Namespace, settings: Settings) -> list[str]:
    async with ParseClient(settings) as parse:
        if args.action == "set":
            if args.percent is None:
                raise InvalidPercent("`rollout set` needs --percent N (0–100)")
            flags = await write_flags(parse, settings, percent=args.percent)
        elif args.action == "on":
            flags = await write_flags(parse, settings, enabled=True, percent=args.percent)
        elif args.action == "off":
            flags = await write_flags(parse, settings, enabled=False)
        else:
            flags = await read_flags(parse, settings)
        lines = _describe(flags, await master_key_only(parse))
        for user_id in getattr(args, "user", None) or []:
            lines.append(
                f"user {user_id}: bucket {canary_bucket(user_id)} -> {choose_storage(flags, user_id)}"
            )
        return lines


def rollout_command(args: argparse.Namespace, settings: Settings) -> int:
    """``toolkit rollout``: print, or change then print, the live rollout flags."""
    if args.percent is not None:
        try:
            validate_percent(args.percent)
        except InvalidPercent as exc:
            print(f"toolkit rollout: {exc}", file=sys.stderr)
            return 2
    try:
        lines = asyncio.run(_rollout(args, settings))
    except InvalidPercent as exc:
        print(f"toolkit rollout: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
