"""A batch stored in Parse comes back identical: file, metadata, ACL, counters (real Parse Server)."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.codec import CODEC
from toolkit.parse.models import MemoryItem
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.validation.workloads import chitchat_memories

CreateBatch = Callable[..., Awaitable[str]]


SUBMISSION_FIELDS = [field.name for field in dataclasses.fields(store.Submission)]


def items(memories: list[dict[str, Any]]) -> list[MemoryItem]:
    return [MemoryItem.model_validate(m) for m in memories]


@pytest.mark.parametrize("count", [1, 100, 10_000])
async def test_round_trip_is_identical(
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    create_batch: CreateBatch,
    unicode_memories: list[dict[str, Any]],
    count: int,
) -> None:
    memories = chitchat_memories(count)
    # Unicode, emoji and code replace the first memories, so every size carries them (1 → the first).
    memories[: len(unicode_memories)] = unicode_memories[:count]
    request_id = await create_batch(memories)

    request = await store.fetch_batch_memory_request_from_parse(parse, settings, request_id)

    assert request is not None
    assert request.memories is not None
    assert [m.model_dump() for m in request.memories] == [m.model_dump() for m in items(memories)]
    assert request.object_id == request_id
    assert request.total_memories == count
    assert request.status == "pending"
    assert (request.processed_count, request.success_count, request.fail_count) == (0, 0, 0)
    assert request.errors == []
    assert request.webhook_sent is False
    assert request.user is not None and request.user.object_id == user.object_id
    assert request.request_id == request.batch_id
    metadata = request.batch_metadata
    assert metadata is not None
    assert metadata.memory_count == count
    assert metadata.storage == "reference"
    assert metadata.codec == CODEC
    assert (metadata.chunk_num, metadata.total_chunks, metadata.source) == (1, 1, "batch_api")
    # The recorded sizes are those of the stored file.
    assert request.batch_data_file is not None and request.batch_data_file.url
    stored = await parse.download(request.batch_data_file.url)
    assert metadata.compressed_size_bytes == len(stored)
    assert metadata.total_size_bytes == len(gzip.decompress(stored))
    assert request.batch_data_file.name.endswith(f"_{request.batch_id}.json.gz")


async def test_gzip_ratio_of_100_chitchat_memories_is_at_least_5x(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    request_id = await create_batch(chitchat_memories(100))
    request = await store.fetch_batch_memory_request_from_parse(
        parse, settings, request_id, with_memories=False
    )
    assert request is not None and request.batch_metadata is not None
    meta = request.batch_metadata
    ratio = meta.total_size_bytes / meta.compressed_size_bytes
    print(
        f"\nchitchat x100: {meta.total_size_bytes} raw -> {meta.compressed_size_bytes} gzip bytes "
        f"= {ratio:.2f}x (level {settings.gzip_level})"
    )
    assert meta.compression_ratio == round(ratio, 2)
    assert ratio >= 5


async def test_object_acl_is_the_owner_and_the_org_role_reading_never_public_never_writable(
    parse: ParseClient, user: ParseUser, create_batch: CreateBatch
) -> None:
    request_id = await create_batch(organization_id="orgAcl1", namespace_id="ns1", workspace_id="ws1")
    raw = await parse.get_object("BatchMemoryRequest", request_id, master=True)
    assert raw["ACL"] == {user.object_id: {"read": True}, "role:org_orgAcl1": {"read": True}}
    assert raw["organization"] == {"__type": "Pointer", "className": "Organization", "objectId": "orgAcl1"}
    assert raw["namespace"]["className"] == "Namespace"
    assert raw["workspace"]["className"] == "WorkSpace"
    assert raw["user"] == {"__type": "Pointer", "className": "_User", "objectId": user.object_id}
    # Every counter and list exists from the start, so Increment and Add never meet a missing field.
    for field, value in (("processedCount", 0), ("successCount", 0), ("failCount", 0), ("errors", [])):
        assert raw[field] == value


async def test_legacy_storage_uploads_no_file(
    parse: ParseClient, settings: Settings, create_batch: CreateBatch
) -> None:
    memories = chitchat_memories(20)
    request_id = await create_batch(memories, storage="legacy")
    request = await store.fetch_batch_memory_request_from_parse(parse, settings, request_id)
    assert request is not None
    assert request.batch_data_file is None
    assert request.memories is None
    assert request.batch_metadata is not None
    assert request.batch_metadata.storage == "legacy"
    assert request.batch_metadata.codec == "none"
    raw = json.dumps(
        [m.model_dump(mode="json") for m in items(memories)], separators=(",", ":"), ensure_ascii=False
    )
    assert request.batch_metadata.total_size_bytes == len(raw.encode())
    assert request.total_memories == 20


async def test_invalid_input_is_refused_before_anything_is_stored(
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    unique: str,
    unicode_memories: list[dict[str, Any]],
) -> None:
    for kw in (
        {"memories": []},
        {"user_id": "../_User/x"},
        {"organization_id": "a/b"},
        {"batch_id": "has space"},
        {"storage": "s3"},
    ):
        args = {
            "batch_id": f"bad{unique}",
            "user_id": user.object_id,
            "memories": items(unicode_memories),
            **kw,
        }
        with pytest.raises(ValueError):
            fields = {name: args.pop(name) for name in SUBMISSION_FIELDS if name in args}
            await store.create_batch_memory_request_in_parse(
                parse, settings, submission=store.Submission(**fields), **args
            )
    assert await parse.count("BatchMemoryRequest", {"batchId": f"bad{unique}"}, master=True) == 0
