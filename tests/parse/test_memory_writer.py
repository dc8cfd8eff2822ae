"""The memory writer against the real Parse Server: batched, idempotent, per-memory failures.

Network faults are real: a TcpProxy in front of Parse refuses connections or swallows answers, switched
by a cue at the moment a chosen request goes out (toolkit/testing/cued_transport.py). PostgreSQL really
down is in the fault suite (tests/faults/test_store_faults.py), which has a stack of its own to stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.fixtures.parse_proxy import via_proxy
from tests.fixtures.worker_process import wait_until
from toolkit.parse import ParseClient
from toolkit.parse.errors import ParseUnavailable
from toolkit.parse.memory_writer import (
    NOT_OURS,
    MemoryWriter,
    WriteContext,
    WriteOutcome,
    count_memories,
    delete_memories,
    memory_fields,
)
from toolkit.parse.models import MemoryItem, memory_object_id
from toolkit.parse.users import ParseUser, add_to_org_role, sign_up
from toolkit.settings import Settings
from toolkit.testing.cued_transport import CuedTransport
from toolkit.testing.ports import free_port
from toolkit.testing.tcp_proxy import TcpProxy
from toolkit.validation.workloads import chitchat_memories


def _items(memories: list[dict], start: int = 0) -> list[tuple[int, MemoryItem]]:
    return [(start + i, MemoryItem.model_validate(m)) for i, m in enumerate(memories)]


def _item(content: str, **extra: object) -> MemoryItem:
    return MemoryItem.model_validate({"content": content, "type": "text", "metadata": {}, **extra})


async def _stored(parse: ParseClient, batch_id: str) -> dict[int, dict]:
    rows = await parse.find("Memory", {"batchId": batch_id}, limit=10_000, master=True)
    return {row["index"]: row for row in rows}


@pytest.fixture
async def batch_id(parse: ParseClient, unique: str) -> AsyncIterator[str]:
    batch = f"writer{unique}"
    yield batch
    await delete_memories(parse, batch)


UNICODE_MEMORIES = [
    {"content": "Grüße aus Köln! Das Café öffnet um 8 Uhr ☕", "type": "text", "metadata": {"lang": "de"}},
    {"content": "今日は雨です。傘を忘れないで 🌧️☂️", "type": "text", "metadata": {"lang": "ja"}},
    {
        "content": "Family trip 👨‍👩‍👧‍👦 booked, flights 🛫 at 06:40",
        "type": "text",
        "metadata": {"emoji": "👍"},
    },
    {"content": "def greet(name):\n    return f'héllo {name} 🐍'", "type": "code_snippet", "metadata": {}},
    {"content": "مرحبا بالعالم — שלום עולם — Привет, мир", "type": "document", "metadata": {"scripts": 3}},
]


@pytest.fixture(scope="module")
def memories_250() -> list[dict]:
    # Real conversation text plus non-Latin scripts, combining sequences and astral-plane emoji.
    return chitchat_memories(245) + UNICODE_MEMORIES


async def test_writes_250_memories_with_fields_and_an_owner_read_only_acl(
    parse: ParseClient, user: ParseUser, other_user: ParseUser, batch_id: str, memories_250: list[dict]
) -> None:
    items = _items(memories_250)
    outcomes = await MemoryWriter(parse).write(WriteContext(batch_id, user.object_id), items)

    assert outcomes == [WriteOutcome(i, True) for i in range(250)]
    assert await count_memories(parse, batch_id) == 250
    stored = await _stored(parse, batch_id)
    assert sorted(stored) == list(range(250))
    for index, item in items:
        row = stored[index]
        assert row["objectId"] == memory_object_id(batch_id, index)
        assert {k: row[k] for k in ("content", "type", "metadata")} == memory_fields(item)
        assert row["batchId"] == batch_id
        assert row["user"] == {"__type": "Pointer", "className": "_User", "objectId": user.object_id}
        assert row["ACL"] == {user.object_id: {"read": True}}
    # Not public: another signed-in user finds none, the owner finds all.
    assert await parse.count("Memory", {"batchId": batch_id}, session_token=other_user.session_token) == 0
    assert await parse.count("Memory", {"batchId": batch_id}, session_token=user.session_token) == 250


async def test_org_role_members_can_read_but_not_others(
    parse: ParseClient, user: ParseUser, other_user: ParseUser, batch_id: str, unique: str
) -> None:
    org = f"org{unique}"
    member = other_user
    await add_to_org_role(parse, org, [member.object_id])
    items = _items(chitchat_memories(20))
    outcomes = await MemoryWriter(parse).write(WriteContext(batch_id, user.object_id, org), items)

    assert all(o.ok for o in outcomes) and len(outcomes) == 20
    stored = await _stored(parse, batch_id)
    assert all(
        row["ACL"] == {user.object_id: {"read": True}, f"role:org_{org}": {"read": True}}
        for row in stored.values()
    )
    assert await parse.count("Memory", {"batchId": batch_id}, session_token=member.session_token) == 20
    outsider = await sign_up(parse)
    assert await parse.count("Memory", {"batchId": batch_id}, session_token=outsider.session_token) == 0


async def test_rewriting_the_same_memories_creates_no_copies(
    parse: ParseClient, user: ParseUser, batch_id: str, memories_250: list[dict]
) -> None:
    writer = MemoryWriter(parse)
    context = WriteContext(batch_id, user.object_id)
    items = _items(memories_250)
    await writer.write(context, items)

    again = await writer.write(context, items)

    assert again == [WriteOutcome(i, True, already_written=True) for i in range(250)]
    assert await count_memories(parse, batch_id) == 250


async def test_mix_of_fresh_and_already_written_indexes(
    parse: ParseClient, user: ParseUser, batch_id: str
) -> None:
    writer = MemoryWriter(parse, batch_size=10)
    context = WriteContext(batch_id, user.object_id)
    items = _items(chitchat_memories(100))
    await writer.write(context, items[::2])  # even indexes first, like a resumed attempt

    outcomes = await writer.write(context, items)

    assert [o.index for o in outcomes] == list(range(100))
    assert all(o.ok for o in outcomes)
    assert [o.already_written for o in outcomes] == [i % 2 == 0 for i in range(100)]
    assert await count_memories(parse, batch_id) == 100


async def test_a_foreign_object_at_a_memory_id_is_a_failed_memory_not_an_already_written_one(
    parse: ParseClient, user: ParseUser, other_user: ParseUser, batch_id: str
) -> None:
    """Objects planted before the permissions were closed (any signed-in user could create a Memory with
    any objectId): the writer counts a duplicate as written only if it is this batch's own memory."""
    foreign = {
        2: {"batchId": batch_id, "index": 2, "user": other_user.object_id},  # another owner
        5: {"batchId": "someOtherBatch", "index": 5, "user": user.object_id},  # another batch
        7: {"batchId": batch_id, "index": 8, "user": user.object_id},  # another index
    }
    for index, planted in foreign.items():
        await parse.create_object(
            "Memory",
            {
                "objectId": memory_object_id(batch_id, index),
                "content": "planted",
                "batchId": planted["batchId"],
                "index": planted["index"],
                "user": {"__type": "Pointer", "className": "_User", "objectId": planted["user"]},
                "ACL": {},
            },
            master=True,
        )
    writer = MemoryWriter(parse, batch_size=5)
    context = WriteContext(batch_id, user.object_id)
    items = _items(chitchat_memories(10))
    await writer.write(context, items[:1])  # index 0 written by an earlier attempt

    outcomes = await writer.write(context, items)

    assert [(o.index, o.ok, o.already_written) for o in outcomes] == [
        (i, i not in foreign, i == 0) for i in range(10)
    ]
    assert {o.index: o.error for o in outcomes if not o.ok} == {i: NOT_OURS for i in foreign}
    rows = await parse.find("Memory", {"batchId": batch_id}, limit=100, master=True)
    assert sorted(row["index"] for row in rows if row["content"] != "planted") == [
        i for i in range(10) if i not in foreign
    ]
    await parse.delete_object("Memory", memory_object_id(batch_id, 5), master=True)  # not of this batch


async def test_processor_is_applied_before_writing(
    parse: ParseClient, user: ParseUser, batch_id: str
) -> None:
    async def upper(index: int, item: MemoryItem) -> MemoryItem:
        return item.model_copy(update={"content": item.content.upper()})

    items = _items(chitchat_memories(30))
    outcomes = await MemoryWriter(parse, processor=upper).write(WriteContext(batch_id, user.object_id), items)

    assert all(o.ok for o in outcomes)
    stored = await _stored(parse, batch_id)
    assert {i: row["content"] for i, row in stored.items()} == {i: item.content.upper() for i, item in items}


async def test_processor_failure_fails_only_that_memory_and_its_message_stays_in_the_log(
    parse: ParseClient, user: ParseUser, batch_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def flaky(index: int, item: MemoryItem) -> MemoryItem:
        if index == 3:
            raise RuntimeError("enrichment service at http://10.1.2.3:8080 said no")
        return item

    outcomes = await MemoryWriter(parse, batch_size=5, processor=flaky).write(
        WriteContext(batch_id, user.object_id), _items(chitchat_memories(12))
    )

    failed = [o for o in outcomes if not o.ok]
    assert [o.index for o in failed] == [3]
    # The owner reads the error (/errors): the type only; the message may name anything internal.
    assert failed[0].error == "processor failed: RuntimeError"
    assert "http://10.1.2.3:8080 said no" in caplog.text
    assert sorted(await _stored(parse, batch_id)) == [i for i in range(12) if i != 3]


async def test_parse_on_postgres_refuses_a_nul_character_per_item(parse: ParseClient, batch_id: str) -> None:
    """Why the writer refuses NUL: the real server fails that sub-request (and only that one)."""
    path = f"{parse.mount_path}/classes/Memory"
    contents = ["before", "nul \x00 here", "after"]
    results = await parse.batch(
        [
            {
                "method": "POST",
                "path": path,
                "body": {
                    "objectId": memory_object_id(batch_id, i),
                    "batchId": batch_id,
                    "index": i,
                    "content": c,
                },
            }
            for i, c in enumerate(contents)
        ],
        master=True,
    )
    assert "success" in results[0] and "success" in results[2]
    assert results[1]["error"]["code"] == "08P01"
    assert await count_memories(parse, batch_id) == 2


async def test_nul_content_is_rejected_for_that_index_only(
    parse: ParseClient, user: ParseUser, batch_id: str
) -> None:
    items = _items(chitchat_memories(20))
    items[5] = (5, _item("a memory with a NUL \x00 inside"))
    items[9] = (9, _item("fine content", metadata={"note": "bad \x00 value"}))

    outcomes = await MemoryWriter(parse, batch_size=8).write(WriteContext(batch_id, user.object_id), items)

    failed = {o.index: o.error for o in outcomes if not o.ok}
    assert sorted(failed) == [5, 9]
    assert (
        failed[5]
        == "invalid memory: memory.content contains a NUL character (\\x00), which PostgreSQL cannot store"
    )
    assert failed[9].startswith("invalid memory: memory.metadata.note contains a NUL")
    assert await count_memories(parse, batch_id) == 18


async def test_server_side_rejection_fails_only_that_index(
    parse: ParseClient, user: ParseUser, batch_id: str
) -> None:
    items = _items(chitchat_memories(10))
    items[2] = (2, _item("metadata Parse cannot store", metadata={"dotted.key": 1}))

    outcomes = await MemoryWriter(parse).write(WriteContext(batch_id, user.object_id), items)

    failed = [o for o in outcomes if not o.ok]
    assert [o.index for o in failed] == [2]
    assert failed[0].error == "Parse error 121: Nested keys should not contain the '$' or '.' characters"
    assert await count_memories(parse, batch_id) == 9


async def test_concurrent_small_chunks_give_the_same_result(
    parse: ParseClient, user: ParseUser, batch_id: str, memories_250: list[dict]
) -> None:
    chunks: list[list[WriteOutcome]] = []
    active = 0
    overlapping = False

    async def on_chunk_done(outcomes: list[WriteOutcome]) -> None:
        nonlocal active, overlapping
        active += 1
        overlapping = overlapping or active > 1
        await asyncio.sleep(0)  # give a concurrent call the chance to overlap if the writer allowed it
        chunks.append(outcomes)
        active -= 1

    items = _items(memories_250)
    outcomes = await MemoryWriter(parse, batch_size=20, concurrency=4).write(
        WriteContext(batch_id, user.object_id), items, on_chunk_done=on_chunk_done
    )

    assert outcomes == [WriteOutcome(i, True) for i in range(250)]
    assert len(chunks) == 13 and all(1 <= len(c) <= 20 for c in chunks)
    assert sorted(o.index for c in chunks for o in c) == list(range(250))
    assert not overlapping
    stored = await _stored(parse, batch_id)
    assert len(stored) == 250 and await count_memories(parse, batch_id) == 250
    assert all(stored[i]["content"] == item.content for i, item in items)


def _batch_calls(transport: CuedTransport) -> int:
    return len(transport.sent_to("POST", "/batch"))


@pytest.mark.parametrize("fault", ["down", "drop_replies"])
async def test_a_batch_call_that_fails_is_retried_without_duplicates(
    settings: Settings, parse: ParseClient, user: ParseUser, batch_id: str, parse_proxy: TcpProxy, fault: str
) -> None:
    """The first /batch call meets a real fault in a real proxy: ``down`` refuses the connection before
    Parse sees anything; ``drop_replies`` lets Parse store the chunk and swallows the answer, and the
    proxy cuts that connection once the chunk is stored (the client sees its call fail, as when a load
    balancer dies). Either way the client's retry must leave exactly one copy of each memory."""
    cut: list[asyncio.Task[None]] = []

    async def cut_once_the_first_chunk_is_stored() -> None:
        async def stored() -> bool:
            return await count_memories(parse, batch_id) == 25

        await wait_until(stored, 60, "the first chunk stored behind the lost answer")
        parse_proxy.set_mode("forward")  # leaving drop_replies cuts the connection that waits

    async def cue(request: httpx.Request) -> None:
        if request.url.path.endswith("/batch") and _batch_calls(transport) == 1:
            parse_proxy.set_mode(fault)  # type: ignore[arg-type]
            if fault == "drop_replies":
                cut.append(asyncio.create_task(cut_once_the_first_chunk_is_stored()))
        elif request.url.path.endswith("/batch"):
            parse_proxy.set_mode("forward")

    transport = CuedTransport(cue)
    async with ParseClient(
        via_proxy(settings, parse_proxy), transport=transport, retry_delays_s=(0.05,)
    ) as flaky:
        outcomes = await MemoryWriter(flaky, batch_size=25, concurrency=1).write(
            WriteContext(batch_id, user.object_id), _items(chitchat_memories(50))
        )
    await asyncio.gather(*cut)

    assert _batch_calls(transport) == 3  # chunk 1 twice, chunk 2 once
    assert all(o.ok for o in outcomes) and len(outcomes) == 50
    # After a lost answer the resend finds chunk 1 already there (137), never a second copy.
    assert [o.already_written for o in outcomes] == [fault == "drop_replies" and i < 25 for i in range(50)]
    assert await count_memories(parse, batch_id) == 50
    assert sorted(await _stored(parse, batch_id)) == list(range(50))


async def test_a_chunk_that_stays_unavailable_raises_and_fails_no_memory(
    settings: Settings, parse: ParseClient, user: ParseUser, batch_id: str, parse_proxy: TcpProxy
) -> None:
    # An outage is not the memories' fault. Recording them as failed lost them for good when Parse came
    # back before the next chunk (found by the fault suite); raising lets the activity retry them.
    dead_id = memory_object_id(batch_id, 10)

    async def cue(request: httpx.Request) -> None:
        # Every call that carries the second chunk finds the proxy down; the others go through.
        parse_proxy.set_mode("down" if dead_id in request.content.decode() else "forward")

    seen: list[list[WriteOutcome]] = []

    async def on_chunk_done(outcomes: list[WriteOutcome]) -> None:
        seen.append(outcomes)

    transport = CuedTransport(cue)
    async with ParseClient(
        via_proxy(settings, parse_proxy), transport=transport, retry_delays_s=(0.01, 0.01)
    ) as flaky:
        with pytest.raises(ParseUnavailable):
            await MemoryWriter(flaky, batch_size=10, concurrency=1).write(
                WriteContext(batch_id, user.object_id),
                _items(chitchat_memories(30)),
                on_chunk_done=on_chunk_done,
            )

    assert _batch_calls(transport) == 1 + 3  # chunk 1, then chunk 2 and its two retries
    assert [[o.index for o in chunk] for chunk in seen] == [list(range(10))]
    assert all(o.ok for chunk in seen for o in chunk)
    assert await count_memories(parse, batch_id) == 10


async def test_parse_down_raises_instead_of_failing_the_memories(
    settings: Settings, user: ParseUser, batch_id: str
) -> None:
    # A real dead Parse: nothing listens on the port.
    down = dataclasses.replace(settings, parse_server_url=f"http://127.0.0.1:{free_port()}/parse")
    seen: list[list[WriteOutcome]] = []

    async def on_chunk_done(outcomes: list[WriteOutcome]) -> None:
        seen.append(outcomes)

    async with ParseClient(down, retry_delays_s=(0.01,)) as unreachable:
        with pytest.raises(ParseUnavailable):
            await MemoryWriter(unreachable, batch_size=10, concurrency=2).write(
                WriteContext(batch_id, user.object_id),
                _items(chitchat_memories(30)),
                on_chunk_done=on_chunk_done,
            )
    assert seen == [], "no memory may be reported failed because Parse was down"


async def test_requests_are_split_to_stay_under_the_byte_limit(
    settings: Settings, parse: ParseClient, user: ParseUser, batch_id: str
) -> None:
    transport = CuedTransport()  # no cue: it only counts what is sent
    items = [(i, _item(f"memory {i} " + "x" * 900)) for i in range(20)]
    items.append((20, _item("y" * 5000)))
    async with ParseClient(settings, transport=transport) as counting:
        outcomes = await MemoryWriter(counting, batch_size=50, max_request_bytes=4096).write(
            WriteContext(batch_id, user.object_id), items
        )

    assert [o.index for o in outcomes if not o.ok] == [20]
    assert outcomes[20].error and "over the 4096-byte limit" in outcomes[20].error
    assert all(len(r.content) <= 4096 for r in transport.sent_to("POST", "/batch"))
    assert (
        _batch_calls(transport) >= 7
    )  # 20 memories of ~1.2 KB cannot share a 4 KB body more than 3 at a time
    assert await count_memories(parse, batch_id) == 20


async def test_misuse_raises_before_writing(parse: ParseClient, user: ParseUser, batch_id: str) -> None:
    writer = MemoryWriter(parse)
    assert await writer.write(WriteContext(batch_id, user.object_id), []) == []
    with pytest.raises(ValueError):
        await writer.write(WriteContext(batch_id, ""), [(0, _item("no owner"))])
    with pytest.raises(ValueError):
        await writer.write(WriteContext(batch_id, user.object_id), [(0, _item("a")), (0, _item("b"))])
    with pytest.raises(ValueError):
        MemoryWriter(parse, batch_size=0)
    assert await count_memories(parse, batch_id) == 0


async def test_callback_errors_propagate(parse: ParseClient, user: ParseUser, batch_id: str) -> None:
    class Stop(Exception):
        pass

    async def on_chunk_done(outcomes: list[WriteOutcome]) -> None:
        raise Stop

    with pytest.raises(Stop):
        await MemoryWriter(parse, batch_size=10, concurrency=2).write(
            WriteContext(batch_id, user.object_id), _items(chitchat_memories(40)), on_chunk_done=on_chunk_done
        )


async def test_delete_memories_removes_every_copy(parse: ParseClient, user: ParseUser, unique: str) -> None:
    batch = f"writerdel{unique}"
    await MemoryWriter(parse).write(WriteContext(batch, user.object_id), _items(chitchat_memories(120)))
    assert await count_memories(parse, batch) == 120

    assert await delete_memories(parse, batch, page_size=50) == 120
    assert await count_memories(parse, batch) == 0
    assert await delete_memories(parse, batch) == 0


def test_an_item_error_of_a_dropped_database_connection_counts_as_an_outage_not_a_bad_memory() -> None:
    """The /batch item errors Parse gives while PostgreSQL is down. The first, with no code, is what a
    fault-suite run saw when PostgreSQL was killed mid-write; it used to fail two memories for good."""
    from toolkit.parse.memory_writer import _is_outage

    assert _is_outage({"code": None, "error": "Connection terminated unexpectedly"})
    assert _is_outage({"code": "ECONNREFUSED", "error": "connect ECONNREFUSED 127.0.0.1:5432"})
    assert _is_outage({"code": 100, "error": "connection failed"})
    assert not _is_outage({"code": 142, "error": "validation failed"})
    assert not _is_outage({"code": None, "error": "a memory this writer cannot store"})
    assert not _is_outage("not a dict")
