"""The in-flight cap, exact across API processes: a user's batches hold numbered slots while they run.

A user has ``cap`` slots. A batch takes one before anything of it is stored, and gives it back when
it ends (completed, partial, failed, refused, discarded). Two rows make a taken slot, created and
deleted together in one Parse transaction:

- ``BatchSlot`` ``<userId>-<k>`` (``0 <= k < cap``): the slot itself. Its objectId is the lock: Parse
  refuses a second object with the same id, so two API processes can never take the same slot and
  no user ever has more than ``cap`` of them, whatever the timing.
- ``BatchSlotHold`` ``<token>``: who holds it. The token is random, one per batch; the batch's
  request stores it (``slotHold``) so whoever ends the batch gives the slot back. The hold also
  records the batch id and when its holder last said it is alive (``touchedAt``): an upload in
  progress touches its hold while its body arrives, so a hold that stops being touched before its
  request exists belongs to a process that died.

Giving a slot back deletes both rows in one transaction. The hold's deletion is what makes a release
count once: a second release with the same token finds no hold, fails the transaction and changes
nothing, even if the slot was meanwhile taken by another batch. So releases may be repeated freely
(a retried activity, a repair racing the worker).

With ``cap <= 0`` (no cap) a batch still takes a hold, without a slot: the holds are also how
``toolkit cleanup`` recognises the chunk files of an upload still in progress.

Parse answers a failed transaction with a bare 500 (code 1), whether a row was taken by someone else
or the database failed (:meth:`ParseClient.transaction`); every transaction here is therefore followed,
on failure, by a read that says which it was.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from toolkit.parse._client import ParseClient
from toolkit.parse.errors import ObjectNotFound, ParseError
from toolkit.parse.models import from_parse_date, to_parse_date, validate_object_id
from toolkit.parse.schema import BATCH_SLOT, BATCH_SLOT_HOLD

__all__ = [
    "HOLD_STALE_AFTER_S",
    "HOLD_TOUCH_EVERY_S",
    "SlotHold",
    "SlotsTaken",
    "holds_of",
    "live_upload_batch_ids",
    "release",
    "take_slot",
    "touch",
]

log = logging.getLogger(__name__)

# An upload in progress touches its hold this often; a hold without a request that nobody touched for
# HOLD_STALE_AFTER_S belongs to a process that died (a single-file batch creates its request within
# seconds of taking the slot, and every later holder is its request).
HOLD_TOUCH_EVERY_S = 30.0
HOLD_STALE_AFTER_S = 300.0
# Holds read per page (a user has at most ``cap`` slots; more holds only with no cap).
_PAGE = 1000
# Rounds of "read the holds, try each free slot" before giving up on a user whose slots churn.
_TAKE_ROUNDS = 3


class SlotsTaken(Exception):
    """Every one of the user's slots is held: the batch must be refused (429)."""

    def __init__(self, held: int, cap: int) -> None:
        super().__init__(f"{held} batches in flight; the limit is {cap}")
        self.held = held
        self.cap = cap


@dataclass(frozen=True)
class SlotHold:
    """A held slot: the token that gives it back, and what it was taken for."""

    token: str
    user_id: str
    slot: int | None  # None: taken with no cap, a hold without a slot
    batch_id: str | None = None
    touched_at: datetime | None = None

    def stale(self, now: datetime, stale_after_s: float = HOLD_STALE_AFTER_S) -> bool:
        return self.touched_at is None or now - self.touched_at > timedelta(seconds=stale_after_s)

    @classmethod
    def from_parse(cls, row: dict[str, Any]) -> SlotHold:
        slot = row.get("slot")
        touched = row.get("touchedAt")
        return cls(
            token=row["objectId"],
            user_id=(row.get("user") or {}).get("objectId", ""),
            slot=int(slot) if isinstance(slot, int | float) and slot >= 0 else None,
            batch_id=row.get("batchId"),
            touched_at=from_parse_date(touched) if touched else None,
        )


def slot_id(user_id: str, slot: int) -> str:
    return f"{user_id}-{slot}"


def _user(user_id: str) -> dict[str, str]:
    return {"__type": "Pointer", "className": "_User", "objectId": user_id}


async def holds_of(client: ParseClient, user_id: str) -> list[SlotHold]:
    """Every hold of the user (master key)."""
    validate_object_id(user_id)
    rows = await client.find(BATCH_SLOT_HOLD, {"user": _user(user_id)}, limit=_PAGE, master=True)
    return [SlotHold.from_parse(row) for row in rows]


async def _exists(client: ParseClient, class_name: str, object_id: str) -> dict[str, Any] | None:
    try:
        return await client.get_object(class_name, object_id, master=True)
    except ObjectNotFound:
        return None


async def take_slot(client: ParseClient, user_id: str, cap: int, *, batch_id: str | None = None) -> SlotHold:
    """Take one of the user's ``cap`` slots (a bare hold when ``cap <= 0``); else :class:`SlotsTaken`."""
    validate_object_id(user_id)
    token = uuid.uuid4().hex
    now = datetime.now(UTC)
    hold_body: dict[str, Any] = {
        "objectId": token,
        "user": _user(user_id),
        "slot": -1,
        "touchedAt": to_parse_date(now),
        "ACL": {},  # the master key only
    }
    if batch_id is not None:
        hold_body["batchId"] = batch_id
    holds_path = f"{client.mount_path}/classes/{BATCH_SLOT_HOLD}"
    if cap <= 0:
        await client.create_object(BATCH_SLOT_HOLD, hold_body, master=True)
        return SlotHold(token, user_id, None, batch_id, now)
    # A free slot can be taken by another batch between the read and the create, and freed again
    # before this process looks: each round reads the holds afresh.
    unexplained: ParseError | None = None
    for _ in range(_TAKE_ROUNDS):
        held = await holds_of(client, user_id)
        if len(held) >= cap:
            raise SlotsTaken(len(held), cap)
        taken = {hold.slot for hold in held}
        for slot in (k for k in range(cap) if k not in taken):
            the_slot = {
                "objectId": slot_id(user_id, slot),
                "user": _user(user_id),
                "slot": slot,
                "holder": token,
                "ACL": {},
            }
            try:
                await client.transaction(
                    [
                        {
                            "method": "POST",
                            "path": f"{client.mount_path}/classes/{BATCH_SLOT}",
                            "body": the_slot,
                        },
                        {"method": "POST", "path": holds_path, "body": {**hold_body, "slot": slot}},
                    ],
                )
            except ParseError as exc:
                # Rolled back, or landed with its answer lost: the slot row says which.
                row = await _exists(client, BATCH_SLOT, slot_id(user_id, slot))
                if row is None:
                    unexplained = exc  # nobody holds it now: freed meanwhile, or a real failure
                if row is None or row.get("holder") != token:
                    continue
            return SlotHold(token, user_id, slot, batch_id, now)
    if unexplained is not None:
        raise unexplained
    raise SlotsTaken(cap, cap)


async def touch(client: ParseClient, token: str) -> bool:
    """Say the hold's holder is alive; False if the hold is gone (its slot was given back or repaired)."""
    validate_object_id(token)
    try:
        await client.update_object(
            BATCH_SLOT_HOLD, token, {"touchedAt": to_parse_date(datetime.now(UTC))}, master=True
        )
    except ObjectNotFound:
        return False
    return True


async def release(client: ParseClient, token: str) -> bool:
    """Give the slot of ``token`` back; True if this call released it, False if it was released already."""
    validate_object_id(token)
    row = await _exists(client, BATCH_SLOT_HOLD, token)
    if row is None:
        return False
    hold = SlotHold.from_parse(row)
    deletes = [{"method": "DELETE", "path": f"{client.mount_path}/classes/{BATCH_SLOT_HOLD}/{token}"}]
    if hold.slot is not None:
        # The slot first: if it is gone or held by another token, the hold's own delete still decides.
        path = f"{client.mount_path}/classes/{BATCH_SLOT}/{slot_id(hold.user_id, hold.slot)}"
        deletes.insert(0, {"method": "DELETE", "path": path})
    try:
        await client.transaction(deletes)
    except ParseError:
        if await _exists(client, BATCH_SLOT_HOLD, token) is None:
            return False  # released meanwhile by someone else: this release changes nothing
        if hold.slot is None or await _exists(client, BATCH_SLOT, slot_id(hold.user_id, hold.slot)):
            raise
        # The slot row is gone (removed by hand): the hold alone is left to delete.
        try:
            await client.delete_object(BATCH_SLOT_HOLD, token, master=True)
        except ObjectNotFound:
            return False
    return True


async def live_upload_batch_ids(
    client: ParseClient, *, stale_after_s: float = HOLD_STALE_AFTER_S
) -> set[str]:
    """Batch ids whose holder touched its hold recently: uploads that may still be writing files."""
    since = datetime.now(UTC) - timedelta(seconds=stale_after_s)
    where = {"batchId": {"$exists": True}, "touchedAt": {"$gt": to_parse_date(since)}}
    found: set[str] = set()
    skip = 0
    while True:
        rows = await client.find(
            BATCH_SLOT_HOLD, where, limit=_PAGE, skip=skip, order="objectId", keys="batchId", master=True
        )
        found.update(row["batchId"] for row in rows if row.get("batchId"))
        skip += len(rows)
        if len(rows) < _PAGE:
            return found
