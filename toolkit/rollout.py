"""The rollout controls: which storage path a user's batch takes (design §1 step 5, §4.2).

Used by the API (per request), the CLI (`toolkit rollout`), the runbook notebook and the load tests;
it needs only a Parse client, never the web app.

Two live flags sit in Parse Config, readable and writable with the master key only:
``USE_PARSE_BATCH_STORAGE`` (bool) and ``PARSE_BATCH_CANARY_PERCENT`` (0–100). The settings carry
the defaults used when Parse Config lacks a key. The canary bucket of a user is a stable digest of
the user id, never Python's ``hash()`` (salted per process, so a user would change buckets between
API workers: the defect of the original plan).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toolkit.parse import ParseClient
from toolkit.parse.models import Storage
from toolkit.settings import Settings

log = logging.getLogger(__name__)

FLAG_KEY = "USE_PARSE_BATCH_STORAGE"
PERCENT_KEY = "PARSE_BATCH_CANARY_PERCENT"
ROLLOUT_KEYS = (FLAG_KEY, PERCENT_KEY)

# A flag change must take effect within this many seconds in every API process.
FLAGS_TTL_S = 5.0


class InvalidPercent(ValueError):
    """A canary percentage outside 0–100."""


def validate_percent(percent: int) -> int:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise InvalidPercent(f"canary percent must be an integer from 0 to 100, got {percent!r}")
    return percent


def canary_bucket(user_id: str) -> int:
    """The user's bucket, 0–99: the first 8 bytes of sha256(user_id), big-endian, mod 100."""
    digest = hashlib.sha256(user_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100


def in_canary(user_id: str, percent: int) -> bool:
    """True when the user falls in the first ``percent`` buckets (same answer in every process)."""
    return canary_bucket(user_id) < percent


@dataclass(frozen=True)
class RolloutFlags:
    use_parse_batch_storage: bool
    canary_percent: int
    # Which keys came from the settings defaults because Parse Config lacks them.
    defaulted: tuple[str, ...] = ()


def choose_storage(flags: RolloutFlags, user_id: str) -> Storage:
    """Flag off: legacy for everyone. Flag on: the new path for users in the canary (100 = all)."""
    if not flags.use_parse_batch_storage:
        return "legacy"
    return "reference" if in_canary(user_id, flags.canary_percent) else "legacy"


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    }:
        return value.strip().lower() in {"1", "true", "yes", "on"}
    raise ValueError(f"not a boolean: {value!r}")


def _as_percent(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not a percentage: {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise ValueError(f"not a percentage: {value!r}")
    return validate_percent(value)


def flags_from_config(params: dict[str, Any], settings: Settings) -> RolloutFlags:
    """Interpret Parse Config ``params``; a missing or unreadable key falls back to the settings default.

    An unreadable value is logged rather than fatal: a typo in the dashboard must not stop ingestion.
    """
    defaulted: list[str] = []

    def read(key: str, convert: Callable[[Any], Any], default: Any) -> Any:
        if key not in params:
            defaulted.append(key)
            return default
        try:
            return convert(params[key])
        except ValueError as exc:
            log.warning("Parse Config %s unreadable (%s); using the default %s", key, exc, default)
            defaulted.append(key)
            return default

    enabled = read(FLAG_KEY, _as_bool, settings.use_parse_batch_storage)
    percent = read(PERCENT_KEY, _as_percent, settings.parse_batch_canary_percent)
    return RolloutFlags(enabled, percent, tuple(defaulted))


async def _read_config(parse: ParseClient) -> dict[str, Any]:
    body = await parse.request("GET", "config", master=True)
    return body if isinstance(body, dict) else {}


async def read_flags(parse: ParseClient, settings: Settings) -> RolloutFlags:
    """The live flags, read now (no cache)."""
    return flags_from_config((await _read_config(parse)).get("params") or {}, settings)


class RolloutReader:
    """The live flags, cached for at most :data:`FLAGS_TTL_S` seconds per process.

    Concurrent requests share one refresh. When Parse Config cannot be read the error propagates
    (the API answers 503): serving a stale decision past the bound would break the rollback promise.
    """

    def __init__(
        self,
        parse: ParseClient,
        settings: Settings,
        *,
        ttl_s: float = FLAGS_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._parse = parse
        self._settings = settings
        self._ttl_s = ttl_s
        # Seconds on a monotonic clock; a test passes its own to step past the bound without waiting.
        self._clock = clock
        self._cached: RolloutFlags | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def flags(self) -> RolloutFlags:
        if self._cached is not None and self._clock() - self._fetched_at < self._ttl_s:
            return self._cached
        async with self._lock:
            if self._cached is not None and self._clock() - self._fetched_at < self._ttl_s:
                return self._cached
            # Stamp before the read: the value is at most ttl old counted from when it was asked for.
            started = self._clock()
            flags = await read_flags(self._parse, self._settings)
            self._cached, self._fetched_at = flags, started
            return flags

    async def storage_for(self, user_id: str) -> Storage:
        return choose_storage(await self.flags(), user_id)


async def write_flags(
    parse: ParseClient, settings: Settings, *, enabled: bool | None = None, percent: int | None = None
) -> RolloutFlags:
    """Change one or both flags; return the flags as they now stand.

    Both keys are always written, each with ``masterKeyOnly: true``: a Parse Config PUT resets
    ``masterKeyOnly`` to false for every key it names without it, which would publish the flags.
    """
    if percent is not None:
        validate_percent(percent)
    current = await read_flags(parse, settings)
    params = {
        FLAG_KEY: current.use_parse_batch_storage if enabled is None else enabled,
        PERCENT_KEY: current.canary_percent if percent is None else percent,
    }
    await parse.request(
        "PUT",
        "config",
        json_body={"params": params, "masterKeyOnly": {key: True for key in ROLLOUT_KEYS}},
        master=True,
    )
    return await read_flags(parse, settings)


async def master_key_only(parse: ParseClient) -> dict[str, bool]:
    """Whether each rollout key is hidden from non-master clients."""
    flags = (await _read_config(parse)).get("masterKeyOnly") or {}
    return {key: bool(flags.get(key)) for key in ROLLOUT_KEYS}
