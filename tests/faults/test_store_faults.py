"""The store against the fault stack's Parse Server when what lies behind it really fails.

PostgreSQL stopped under Parse, and a schema that no longer matches what the code writes (a deploy
whose ``toolkit migrate`` has not run). The fault stack is this session's own, so stopping its
database or changing its schema disturbs no other test; each test leaves it as it found it.
"""

from __future__ import annotations

import uuid

import pytest
from faultkit import Trial, wait_until

from toolkit.parse import ParseClient, ParseError, ParseUnavailable
from toolkit.parse import batch_requests as store
from toolkit.parse.cleanup import local_files_dir
from toolkit.parse.memory_writer import MEMORY_CLASS, MemoryWriter, WriteContext, WriteOutcome
from toolkit.parse.models import MemoryItem
from toolkit.parse.schema import BATCH_MEMORY_REQUEST, migrate
from toolkit.validation.workloads import chitchat_memories


async def _answers(parse: ParseClient) -> bool:
    """Parse reaches its database (a read that needs it succeeds)."""
    try:
        await parse.count(MEMORY_CLASS, {"batchId": "none"}, master=True)
    except ParseError:
        return False
    return True


async def test_the_writer_raises_while_postgresql_is_down_and_its_retry_writes_every_memory(
    trial: Trial,
) -> None:
    batch_id = f"pgdown{uuid.uuid4().hex[:12]}"
    context = WriteContext(batch_id, trial.users.reference.object_id)
    items = [(i, MemoryItem.model_validate(m)) for i, m in enumerate(chitchat_memories(20))]
    writer = MemoryWriter(trial.parse, batch_size=10, concurrency=1)
    reported: list[list[WriteOutcome]] = []

    async def on_chunk_done(outcomes: list[WriteOutcome]) -> None:
        reported.append(outcomes)

    trial.stack.kill("postgres")
    try:
        # Parse answers the /batch call 200, with a connection error for every item.
        with pytest.raises(ParseUnavailable, match="ECONNREFUSED"):
            await writer.write(context, items, on_chunk_done=on_chunk_done)
    finally:
        await trial.stack.start_async("postgres")
    assert reported == [], "no memory may be reported failed because the database was down"

    # What the activity's retry does, once Parse reaches its database again.
    await wait_until(lambda: _answers(trial.parse), 120, "Parse to reach its database again")
    outcomes = await writer.write(context, items)
    assert outcomes == [WriteOutcome(i, True) for i in range(20)]
    rows = await trial.parse.find(MEMORY_CLASS, {"batchId": batch_id}, keys="index", limit=100, master=True)
    assert sorted(row["index"] for row in rows) == list(range(20))


async def test_a_create_the_schema_refuses_leaves_no_orphan_file(trial: Trial) -> None:
    """``workspace`` is a Number on this Parse, as after a schema drift: Parse refuses the create after
    the upload (error 111), and the uploaded batch file must go with it."""
    parse, settings = trial.parse, trial.stack.settings
    batch_id = f"drift{uuid.uuid4().hex[:12]}"
    files = local_files_dir(settings)
    assert files is not None

    def batch_files() -> list[str]:
        return [path.name for path in files.iterdir() if batch_id in path.name]

    async def set_workspace_field(field: dict[str, str]) -> None:
        # Parse changes a field's type only by deleting it first (the fault trials never set it).
        schema = f"schemas/{BATCH_MEMORY_REQUEST}"
        await parse.request(
            "PUT", schema, json_body={"fields": {"workspace": {"__op": "Delete"}}}, master=True
        )
        if field:
            await parse.request("PUT", schema, json_body={"fields": {"workspace": field}}, master=True)

    await set_workspace_field({"type": "Number"})
    try:
        with pytest.raises(ParseError) as refused:
            await store.create_batch_memory_request_in_parse(
                parse,
                settings,
                batch_id=batch_id,
                submission=store.Submission(trial.users.reference.object_id, workspace_id="ws1"),
                memories=[MemoryItem.model_validate(m) for m in chitchat_memories(10)],
            )
    finally:
        await set_workspace_field({})
        assert f"{BATCH_MEMORY_REQUEST}: added fields workspace" in await migrate(parse, settings)
    assert refused.value.code == 111 and not isinstance(refused.value, ParseUnavailable), refused.value
    assert "expected Number but got Pointer" in str(refused.value)
    assert batch_files() == [], "the uploaded batch file outlived the refused create"
    assert await parse.count(BATCH_MEMORY_REQUEST, {"batchId": batch_id}, master=True) == 0
