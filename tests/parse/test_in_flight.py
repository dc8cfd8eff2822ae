"""The in-flight slots against the real Parse Server: exact under a race, released once (issue 16)."""

from __future__ import annotations

import asyncio

import pytest

from toolkit.parse import ParseClient, in_flight
from toolkit.parse.in_flight import SlotsTaken, slot_id
from toolkit.parse.schema import BATCH_SLOT
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings

CAP = 3
RACERS = 20


async def test_racing_takers_get_exactly_the_cap_and_every_other_one_is_refused(
    parse: ParseClient, settings: Settings, user: ParseUser
) -> None:
    """Twenty takers at once: three slots, seventeen refusals, nothing else.

    The client has no retries: a rolled-back transaction (Parse answers 500 and closes the connection)
    must not leave a dead connection in the pool for the read that follows it.
    """
    async with ParseClient(settings, retry_delays_s=()) as client:

        async def take() -> in_flight.SlotHold | str:
            try:
                return await in_flight.take_slot(client, user.object_id, CAP)
            except SlotsTaken:
                return "429"

        outcomes = await asyncio.gather(*(take() for _ in range(RACERS)))
    held = [o for o in outcomes if isinstance(o, in_flight.SlotHold)]
    assert sorted(o.slot for o in held) == list(range(CAP))
    assert outcomes.count("429") == RACERS - CAP
    stored = await in_flight.holds_of(parse, user.object_id)
    assert sorted(h.token for h in stored) == sorted(h.token for h in held)
    for hold in held:
        assert await in_flight.release(parse, hold.token)


async def test_a_release_counts_once_even_when_the_slot_was_taken_again(
    parse: ParseClient, user: ParseUser
) -> None:
    first = await in_flight.take_slot(parse, user.object_id, 1)
    assert await in_flight.release(parse, first.token)
    second = await in_flight.take_slot(parse, user.object_id, 1)
    assert second.slot == first.slot == 0

    # A late repeat of the first release (a retried activity, a repair racing the worker) frees nothing.
    assert not await in_flight.release(parse, first.token)
    row = await parse.get_object(BATCH_SLOT, slot_id(user.object_id, 0), master=True)
    assert row["holder"] == second.token
    with pytest.raises(SlotsTaken):
        await in_flight.take_slot(parse, user.object_id, 1)
    assert not await in_flight.touch(parse, first.token)
    assert await in_flight.touch(parse, second.token)
    assert await in_flight.release(parse, second.token)
    assert await in_flight.holds_of(parse, user.object_id) == []


async def test_without_a_cap_a_batch_holds_no_slot_but_is_still_known(
    parse: ParseClient, user: ParseUser
) -> None:
    holds = [await in_flight.take_slot(parse, user.object_id, 0, batch_id=f"b{n}") for n in range(3)]
    assert [h.slot for h in holds] == [None, None, None]
    assert {"b0", "b1", "b2"} <= await in_flight.live_upload_batch_ids(parse)
    for hold in holds:
        assert await in_flight.release(parse, hold.token)
