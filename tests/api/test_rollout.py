"""Rollout controls: stable canary buckets, the live flags in Parse Config, the rollout command."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from toolkit import rollout
from toolkit.cli.rollout import rollout_command
from toolkit.parse import ParseClient
from toolkit.rollout import (
    FLAGS_TTL_S,
    InvalidPercent,
    RolloutFlags,
    RolloutReader,
    canary_bucket,
    choose_storage,
    flags_from_config,
    in_canary,
    validate_percent,
)
from toolkit.settings import Settings


def _synthetic_user_ids(count: int) -> list[str]:
    """Ids shaped like Parse objectIds (10 alphanumerics), from a fixed seed."""
    rng = random.Random(20240501)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return ["".join(rng.choices(alphabet, k=10)) for _ in range(count)]


USER_IDS = _synthetic_user_ids(10_000)

# Run in a fresh interpreter: the canary buckets (ours) and hash() buckets (the original plan's).
_BUCKETS_SCRIPT = """
import hashlib, random, sys
from toolkit.rollout import canary_bucket
rng = random.Random(20240501)
alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
ids = ["".join(rng.choices(alphabet, k=10)) for _ in range(10_000)]
ours = ",".join(str(canary_bucket(i)) for i in ids)
salted = ",".join(str(hash(i) % 100) for i in ids)
print(hashlib.sha256(ours.encode()).hexdigest(), hashlib.sha256(salted.encode()).hexdigest())
"""


def _digest(buckets: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, buckets)).encode()).hexdigest()


def test_ten_percent_canary_takes_about_ten_percent_of_users() -> None:
    share = sum(in_canary(user_id, 10) for user_id in USER_IDS) / len(USER_IDS)
    assert 0.09 <= share <= 0.11, share


# Pinned: every API process and every deploy must put a user in the same bucket, or a rollout at N %
# moves users between the paths mid-flight (and a rollback no longer covers the users it covered).
# Computed once outside Python, from the documented formula (the first 8 bytes of sha256, mod 100):
#   printf '%s' u4 | openssl dgst -sha256 -r | cut -c1-16 | tr a-f A-F  →  echo "ibase=16; <hex> % 64" | bc
# (64 in base 16 is 100). Never change these values: change the function only with a migration note.
PINNED_BUCKETS = {"abc123XYZ0": 92, "0000000000": 13, "Ab3dEf9hIj": 62, "u4": 9, "u9": 18, "u6": 25}


def test_buckets_are_pinned_to_values_computed_outside_the_code() -> None:
    assert {user_id: canary_bucket(user_id) for user_id in PINNED_BUCKETS} == PINNED_BUCKETS


def test_buckets_are_the_same_in_processes_with_different_hash_seeds(stack_environ: dict[str, str]) -> None:
    answers = []
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", _BUCKETS_SCRIPT],
            env={**stack_environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        answers.append(result.stdout.split())
    (ours_1, salted_1), (ours_2, salted_2) = answers
    assert ours_1 == ours_2 == _digest([canary_bucket(u) for u in USER_IDS])
    # The original plan's hash() buckets do move between processes: the defect this guards against.
    assert salted_1 != salted_2


def test_choose_storage_follows_the_flag_then_the_canary() -> None:
    inside = next(u for u in USER_IDS if canary_bucket(u) < 50)
    outside = next(u for u in USER_IDS if canary_bucket(u) >= 50)
    off = RolloutFlags(use_parse_batch_storage=False, canary_percent=100)
    assert {choose_storage(off, u) for u in USER_IDS[:500]} == {"legacy"}
    nobody = RolloutFlags(use_parse_batch_storage=True, canary_percent=0)
    assert {choose_storage(nobody, u) for u in USER_IDS[:500]} == {"legacy"}
    everyone = RolloutFlags(use_parse_batch_storage=True, canary_percent=100)
    assert {choose_storage(everyone, u) for u in USER_IDS} == {"reference"}
    half = RolloutFlags(use_parse_batch_storage=True, canary_percent=50)
    assert (choose_storage(half, inside), choose_storage(half, outside)) == ("reference", "legacy")


@pytest.mark.parametrize("bad", [-1, 101, 1000, True, 5.5, "10"])
def test_percent_outside_0_to_100_is_refused(bad: object) -> None:
    with pytest.raises(InvalidPercent):
        validate_percent(bad)  # type: ignore[arg-type]


def test_missing_config_keys_fall_back_to_the_settings(settings: Settings) -> None:
    import dataclasses

    defaults = dataclasses.replace(settings, use_parse_batch_storage=True, parse_batch_canary_percent=25)
    assert flags_from_config({}, defaults) == RolloutFlags(
        True, 25, ("USE_PARSE_BATCH_STORAGE", "PARSE_BATCH_CANARY_PERCENT")
    )
    assert flags_from_config(
        {"USE_PARSE_BATCH_STORAGE": "false", "PARSE_BATCH_CANARY_PERCENT": "40"}, defaults
    ) == (RolloutFlags(False, 40, ()))
    # An unreadable value (a dashboard typo) falls back too, and says so.
    assert flags_from_config(
        {"USE_PARSE_BATCH_STORAGE": "maybe", "PARSE_BATCH_CANARY_PERCENT": 250}, defaults
    ) == (RolloutFlags(True, 25, ("USE_PARSE_BATCH_STORAGE", "PARSE_BATCH_CANARY_PERCENT")))


# ---- live flags in Parse Config --------------------------------------------------------------------------
async def _public_config(settings: Settings) -> dict[str, object]:
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{settings.parse_url}/config",
            headers={
                "X-Parse-Application-Id": settings.parse_app_id,
                "X-Parse-REST-API-Key": settings.parse_rest_api_key,
            },
        )
    return response.json()["params"]


async def test_written_flags_stay_master_key_only(
    parse: ParseClient, settings: Settings, set_flags: object
) -> None:
    # set_flags restores the previous values afterwards; write directly to skip its cache wait.
    flags = await rollout.write_flags(parse, settings, enabled=True, percent=37)
    assert (flags.use_parse_batch_storage, flags.canary_percent, flags.defaulted) == (True, 37, ())
    assert await rollout.master_key_only(parse) == {
        "USE_PARSE_BATCH_STORAGE": True,
        "PARSE_BATCH_CANARY_PERCENT": True,
    }
    public = await _public_config(settings)
    assert "USE_PARSE_BATCH_STORAGE" not in public and "PARSE_BATCH_CANARY_PERCENT" not in public
    # Changing one flag keeps the other.
    flags = await rollout.write_flags(parse, settings, enabled=False)
    assert (flags.use_parse_batch_storage, flags.canary_percent) == (False, 37)
    assert await rollout.master_key_only(parse) == {
        "USE_PARSE_BATCH_STORAGE": True,
        "PARSE_BATCH_CANARY_PERCENT": True,
    }


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_turning_the_flag_off_takes_effect_within_the_cache_bound(
    parse: ParseClient, settings: Settings, set_flags: object
) -> None:
    user_id = USER_IDS[0]
    clock = _Clock()
    await rollout.write_flags(parse, settings, enabled=True, percent=100)
    reader = RolloutReader(parse, settings, clock=clock)
    assert await reader.storage_for(user_id) == "reference"  # read at 1,000 s, cached until 1,000 + TTL

    await rollout.write_flags(parse, settings, enabled=False)
    # Until the bound the cached decision stands (one Parse read per process per TTL)...
    clock.now = 1_000.0 + FLAGS_TTL_S - 0.01
    assert await reader.storage_for(user_id) == "reference"
    # ...and at the bound the next decision re-reads Parse and follows the switch.
    clock.now = 1_000.0 + FLAGS_TTL_S
    assert await reader.storage_for(user_id) == "legacy"


# ---- `toolkit rollout` ------------------------------------------------------------------------------------
@pytest.fixture
def restore_flags_sync(settings: Settings) -> Iterator[None]:
    async def read() -> RolloutFlags:
        async with ParseClient(settings) as parse:
            return await rollout.read_flags(parse, settings)

    before = asyncio.run(read())
    yield

    async def restore() -> None:
        async with ParseClient(settings) as parse:
            await rollout.write_flags(
                parse, settings, enabled=before.use_parse_batch_storage, percent=before.canary_percent
            )

    asyncio.run(restore())


def _command(
    settings: Settings, action: str, percent: int | None = None, users: list[str] | None = None
) -> int:
    return rollout_command(argparse.Namespace(action=action, percent=percent, user=users), settings)


def test_rollout_command_sets_and_reports(
    settings: Settings, restore_flags_sync: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _command(settings, "set", 25) == 0
    assert _command(settings, "on") == 0
    capsys.readouterr()
    inside = next(u for u in USER_IDS if canary_bucket(u) < 25)
    assert _command(settings, "status", users=[inside]) == 0
    out = capsys.readouterr().out
    assert "USE_PARSE_BATCH_STORAGE=true" in out and "PARSE_BATCH_CANARY_PERCENT=25" in out
    assert "25% of users on the reference path" in out
    assert f"user {inside}: bucket {canary_bucket(inside)} -> reference" in out
    assert "WARNING" not in out

    assert _command(settings, "off") == 0
    out = capsys.readouterr().out
    assert "USE_PARSE_BATCH_STORAGE=false" in out and "PARSE_BATCH_CANARY_PERCENT=25" in out
    assert "rolled back" in out


@pytest.mark.parametrize(("action", "percent"), [("set", 101), ("set", -5), ("set", None), ("on", 300)])
def test_rollout_command_refuses_a_bad_percent_and_changes_nothing(
    settings: Settings,
    restore_flags_sync: None,
    capsys: pytest.CaptureFixture[str],
    action: str,
    percent: int | None,
) -> None:
    assert _command(settings, "status") == 0
    before = capsys.readouterr().out
    assert _command(settings, action, percent) == 2
    captured = capsys.readouterr()
    assert "percent" in captured.err
    assert _command(settings, "status") == 0
    assert capsys.readouterr().out == before
