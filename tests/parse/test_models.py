"""Parse models: the Parse wire form, lossless round trips, and deterministic, safe object ids."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from toolkit.parse.models import (
    FINISHED_STATUSES,
    BatchError,
    BatchMemoryRequest,
    BatchMetadata,
    MemoryItem,
    ParseFile,
    Pointer,
    error_object_id,
    from_parse_date,
    memory_object_id,
    to_parse_date,
    validate_object_id,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


def full_request() -> BatchMemoryRequest:
    """A request with every field set (url None: Parse is only ever sent a file's name)."""
    return BatchMemoryRequest(
        object_id="Req0bj3ct1",
        created_at=T0,
        updated_at=T0 + timedelta(seconds=5),
        batch_id="batch-abc",
        request_id="req-123",
        organization=Pointer(class_name="Organization", object_id="org1"),
        namespace=Pointer(class_name="Namespace", object_id="ns1"),
        user=Pointer(class_name="_User", object_id="user1"),
        workspace=Pointer(class_name="WorkSpace", object_id="ws1"),
        batch_data_file=ParseFile(name="abc_batch.json.gz"),
        batch_metadata=BatchMetadata(
            memory_count=3,
            total_size_bytes=1200,
            compressed_size_bytes=300,
            compression_ratio=4.0,
            codec="gzip+json",
            chunk_num=1,
            total_chunks=1,
            source="batch_api",
            created_at=T0,
            storage="reference",
            note="extra keys survive",
        ),
        status="partial",
        total_memories=3,
        processed_count=3,
        success_count=2,
        fail_count=1,
        errors=[
            BatchError(index=2, error="later", timestamp=T0 + timedelta(milliseconds=1)),
            BatchError(index=2, error="earlier", timestamp=T0),
            BatchError(index=-1, error="batch", timestamp=T0),
        ],
        workflow_id="batch-batch-abc",
        workflow_run_id="run-1",
        webhook_url="https://example.com/hook",
        webhook_secret="whsec_xyz",
        webhook_sent=True,
        started_at=T0,
        completed_at=T0 + timedelta(seconds=2, milliseconds=250),
        processing_duration_ms=2250,
        idempotency_key="key-1",
    )


def parse_response(body: dict) -> dict:
    """What Parse returns for a stored body: server fields, an ACL, and the file's url."""
    stored = {
        **body,
        "objectId": "Req0bj3ct1",
        "createdAt": "2024-05-01T12:00:00.123Z",
        "updatedAt": "2024-05-01T12:00:05.123Z",
        "ACL": {"user1": {"read": True, "write": True}},
    }
    if "batchDataFile" in stored:
        stored["batchDataFile"] = {
            **stored["batchDataFile"],
            "url": "http://parse/files/app/abc_batch.json.gz",
        }
    return stored


def test_to_parse_uses_parse_names_and_types() -> None:
    body = full_request().to_parse()

    assert body["batchId"] == "batch-abc"
    assert body["organization"] == {"__type": "Pointer", "className": "Organization", "objectId": "org1"}
    assert body["namespace"] == {"__type": "Pointer", "className": "Namespace", "objectId": "ns1"}
    assert body["user"] == {"__type": "Pointer", "className": "_User", "objectId": "user1"}
    assert body["workspace"] == {"__type": "Pointer", "className": "WorkSpace", "objectId": "ws1"}
    assert body["batchDataFile"] == {"__type": "File", "name": "abc_batch.json.gz"}
    assert body["startedAt"] == {"__type": "Date", "iso": "2024-05-01T12:00:00.123Z"}
    assert body["completedAt"] == {"__type": "Date", "iso": "2024-05-01T12:00:02.373Z"}
    assert body["batchMetadata"]["created_at"] == "2024-05-01T12:00:00.123Z"
    assert body["batchMetadata"]["note"] == "extra keys survive"
    assert body["errors"][0] == {"index": -1, "error": "batch", "timestamp": "2024-05-01T12:00:00.123Z"}
    assert (body["processingDurationMs"], body["webhookSent"], body["webhookSecret"]) == (
        2250,
        True,
        "whsec_xyz",
    )
    for never in ("objectId", "createdAt", "updatedAt", "memories", "ACL"):
        assert never not in body
    assert all(re.fullmatch(r"[a-z][A-Za-z]*", key) for key in body)


def test_to_parse_omits_none_fields() -> None:
    body = BatchMemoryRequest(batch_id="b1", user="u1").to_parse()

    assert body == {
        "batchId": "b1",
        "user": {"__type": "Pointer", "className": "_User", "objectId": "u1"},
        "status": "pending",
        "totalMemories": 0,
        "processedCount": 0,
        "successCount": 0,
        "failCount": 0,
        "errors": [],
        "webhookSent": False,
    }


def test_round_trip_is_lossless_for_every_field() -> None:
    request = full_request()

    again = BatchMemoryRequest.from_parse(parse_response(request.to_parse()))

    assert again.model_dump(exclude={"batch_data_file"}) == request.model_dump(exclude={"batch_data_file"})
    assert again.batch_data_file == ParseFile(
        name="abc_batch.json.gz", url="http://parse/files/app/abc_batch.json.gz"
    )
    # Without the server's additions the round trip is exact, field for field.
    plain = request.model_copy(update={"object_id": None, "created_at": None, "updated_at": None})
    assert BatchMemoryRequest.from_parse(plain.to_parse()) == plain
    assert BatchMemoryRequest.from_parse(again.to_parse()).to_parse() == request.to_parse()


def test_every_parse_field_of_the_design_is_mapped() -> None:
    design_fields = {
        "batchId", "requestId", "organization", "namespace", "user", "workspace", "batchDataFile",
        "batchMetadata", "status", "totalMemories", "workflowId", "workflowRunId", "webhookUrl",
        "webhookSecret", "webhookSent", "startedAt", "completedAt", "processingDurationMs", "errors",
        "processedCount", "successCount", "failCount",
    }  # fmt: skip
    assert design_fields <= set(full_request().to_parse())


def test_acl_is_not_part_of_the_model() -> None:
    request = BatchMemoryRequest.from_parse(parse_response(full_request().to_parse()))

    assert "acl" not in BatchMemoryRequest.model_fields and "ACL" not in BatchMemoryRequest.model_fields
    assert "ACL" not in request.to_parse()
    with pytest.raises(ValidationError):
        BatchMemoryRequest(batch_id="b1", ACL={"*": {"read": True}})


def test_memories_are_never_sent_to_parse() -> None:
    request = BatchMemoryRequest(batch_id="b1", memories=[MemoryItem(content="hello")])

    assert request.memories == [MemoryItem(content="hello", type="text", metadata={})]
    assert "memories" not in request.to_parse()
    assert BatchMemoryRequest.from_parse({"batchId": "b1", "memories": [{"content": "x"}]}).memories is None


def test_errors_are_sorted_by_index_then_timestamp_on_read() -> None:
    shuffled = [
        {"index": 7, "error": "c", "timestamp": "2024-05-01T12:00:01.000Z"},
        {"index": 3, "error": "b", "timestamp": "2024-05-01T12:00:02.000Z"},
        {"index": 3, "error": "a", "timestamp": {"__type": "Date", "iso": "2024-05-01T12:00:01.000Z"}},
    ]
    request = BatchMemoryRequest.from_parse({"batchId": "b1", "errors": shuffled})

    assert [e.error for e in request.errors] == ["a", "b", "c"]
    assert request.errors[0].timestamp == datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)


def test_from_parse_ignores_unknown_keys_and_nulls() -> None:
    request = BatchMemoryRequest.from_parse(
        {
            "batchId": "b1",
            "ACL": {},
            "somethingNew": 1,
            "webhookUrl": None,
            "__type": "Object",
            "className": "X",
        }
    )
    assert request.batch_id == "b1" and request.webhook_url is None


def test_webhook_secret_is_not_in_repr() -> None:
    assert "whsec_xyz" not in repr(full_request())
    assert "whsec_xyz" not in str(full_request())


def test_pointer_fields_accept_ids_and_refuse_the_wrong_class() -> None:
    request = BatchMemoryRequest(
        batch_id="b1",
        user="u1",
        organization={"__type": "Pointer", "className": "Organization", "objectId": "o1"},
    )
    assert request.user == Pointer(class_name="_User", object_id="u1")
    assert request.organization == Pointer(class_name="Organization", object_id="o1")

    with pytest.raises(ValidationError, match="must point to _User"):
        BatchMemoryRequest(batch_id="b1", user=Pointer(class_name="Organization", object_id="o1"))
    with pytest.raises(ValidationError):
        BatchMemoryRequest(batch_id="b1", user="../etc")


def test_status_vocabulary() -> None:
    assert FINISHED_STATUSES == ("completed", "partial", "failed")
    with pytest.raises(ValidationError):
        BatchMemoryRequest(batch_id="b1", status="done")


def test_pointer_wire_form() -> None:
    wire = {"__type": "Pointer", "className": "_User", "objectId": "abc123"}
    pointer = Pointer.from_parse(wire)

    assert pointer == Pointer(class_name="_User", object_id="abc123")
    assert pointer.to_parse() == wire
    with pytest.raises(ValidationError):
        Pointer.from_parse({"__type": "File", "name": "x"})
    with pytest.raises(ValidationError):
        Pointer(class_name="_User", object_id="a/b")


def test_file_is_sent_by_name_only_and_read_with_url() -> None:
    stored = ParseFile.from_parse({"__type": "File", "name": "f.gz", "url": "http://parse/files/app/f.gz"})

    assert stored == ParseFile(name="f.gz", url="http://parse/files/app/f.gz")
    assert stored.to_parse() == {"__type": "File", "name": "f.gz"}
    with pytest.raises(ValidationError):
        ParseFile.from_parse({"__type": "Pointer", "name": "f.gz"})


def test_parse_dates() -> None:
    dt = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

    assert to_parse_date(dt) == {"__type": "Date", "iso": "2024-01-02T03:04:05.678Z"}
    assert to_parse_date(dt.replace(microsecond=0)) == {"__type": "Date", "iso": "2024-01-02T03:04:05.000Z"}
    # Other zones are converted; naive datetimes are taken as UTC, as Parse does.
    plus2 = datetime(2024, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert to_parse_date(plus2)["iso"] == "2024-01-02T03:04:05.000Z"
    assert to_parse_date(datetime(2024, 1, 2, 3, 4, 5))["iso"] == "2024-01-02T03:04:05.000Z"

    expected = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert from_parse_date({"__type": "Date", "iso": "2024-01-02T03:04:05.678Z"}) == expected
    assert from_parse_date("2024-01-02T03:04:05.678Z") == expected
    assert from_parse_date("2024-01-02T05:04:05.678+02:00") == expected
    assert from_parse_date(to_parse_date(expected)) == expected
    assert from_parse_date("2024-01-02T03:04:05.678Z").tzinfo is UTC
    for bad in ({"__type": "Pointer", "iso": "2024-01-02T03:04:05Z"}, {"__type": "Date"}, "yesterday", 12):
        with pytest.raises(ValueError):
            from_parse_date(bad)  # type: ignore[arg-type]


def test_model_datetimes_keep_parse_precision() -> None:
    error = BatchError(index=0, error="x", timestamp=datetime(2024, 1, 1, 0, 0, 0, 999999, tzinfo=UTC))

    assert error.timestamp == datetime(2024, 1, 1, 0, 0, 0, 999000, tzinfo=UTC)
    assert BatchError.from_parse(error.to_parse()) == error
    assert error.model_dump(mode="json")["timestamp"] == "2024-01-01T00:00:00.999Z"


def test_memory_item() -> None:
    item = MemoryItem.model_validate({"content": "hi"})

    assert (item.type, item.metadata) == ("text", {})
    assert MemoryItem(content="x", type="code_snippet").type == "code_snippet"
    for bad in ({"content": ""}, {"content": "x", "type": "image"}, {"content": "x", "extra": 1}, {}):
        with pytest.raises(ValidationError):
            MemoryItem.model_validate(bad)
    assert MemoryItem(content="a").metadata is not MemoryItem(content="b").metadata


def test_batch_metadata_defaults_and_storage() -> None:
    meta = BatchMetadata(
        memory_count=1,
        total_size_bytes=10,
        compressed_size_bytes=5,
        compression_ratio=2.0,
        codec="gzip+json",
        created_at=T0,
        storage="legacy",
    )
    assert (meta.chunk_num, meta.total_chunks, meta.source) == (1, 1, "batch_api")
    with pytest.raises(ValidationError):
        BatchMetadata(
            memory_count=1,
            total_size_bytes=10,
            compressed_size_bytes=5,
            compression_ratio=2.0,
            codec="gzip+json",
            created_at=T0,
            storage="s3",
        )


def test_memory_object_ids_are_deterministic_distinct_and_valid() -> None:
    ids = [memory_object_id("batch-1", i) for i in range(5000)]

    assert ids == [memory_object_id("batch-1", i) for i in range(5000)]
    assert len(set(ids)) == 5000
    assert memory_object_id("batch-2", 0) != ids[0]
    assert memory_object_id("batch-1:0", 0) != memory_object_id("batch-1", 0)
    for object_id in ids + [memory_object_id("ünïcødé/../batch", 10**9)]:
        assert re.fullmatch(r"[A-Za-z0-9]{1,32}", object_id)
        assert validate_object_id(object_id) == object_id
    assert {len(object_id) for object_id in ids} == {26}
    # Pinned: a change here would orphan every Memory already written.
    assert memory_object_id("b", 0) == "m1c9xU4IdGyoNYVz9k0FjTkdcZ"


# Pinned: a retried activity must find the error it already stored (one entry per index), across a
# deploy too. Computed once outside Python, from the documented formula ("e" + 25 base-62 digits of the
# first 18 bytes of sha256("error:<batch_id>:<index>"), digits 0-9A-Za-z): openssl for the digest, bc
# for the base change (`echo "obase=62; ibase=16; <36 hex digits>" | bc`, each output pair one digit).
PINNED_ERROR_IDS = {("b", 0): "e236dRTjHKIQPRkm97FldDJrrf", ("b", -1): "e0g4UUFDpDHJTHGwJWK8oB7un3"}


def test_error_object_ids_are_pinned_to_values_computed_outside_the_code() -> None:
    assert {key: error_object_id(*key) for key in PINNED_ERROR_IDS} == PINNED_ERROR_IDS
    # Never the id of the memory at the same index: errors and memories live in different classes,
    # but one derivation for both would let a planted id in one collide with the other.
    assert error_object_id("b", 0) != memory_object_id("b", 0)


@pytest.mark.parametrize("index", [-2, 1.0, "1", True])
def test_error_object_id_refuses_bad_indexes(index: object) -> None:
    with pytest.raises(ValueError):
        error_object_id("b", index)  # type: ignore[arg-type]


@pytest.mark.parametrize("index", [-1, 1.0, "1", True])
def test_memory_object_id_refuses_bad_indexes(index: object) -> None:
    with pytest.raises(ValueError):
        memory_object_id("b", index)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["abc", "A-b_9", "x" * 64, "0"])
def test_validate_object_id_accepts(value: str) -> None:
    assert validate_object_id(value) == value


@pytest.mark.parametrize(
    "value", ["a/b", "", "../x", "..", "a b", "a%2Fb", "abc\n", "x" * 65, "é", "a.b", None, 12, b"abc"]
)
def test_validate_object_id_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        validate_object_id(value)


def test_distinct_errors_keep_the_latest_per_memory_and_every_batch_level_one() -> None:
    from datetime import UTC, datetime, timedelta

    from toolkit.parse.models import BatchError, BatchMemoryRequest

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    errors = [
        BatchError(index=3, error="first try", timestamp=t0),
        BatchError(index=3, error="retry", timestamp=t0 + timedelta(seconds=1)),
        BatchError(index=1, error="x", timestamp=t0),
        BatchError(index=-1, error="batch a", timestamp=t0),
        BatchError(index=-1, error="batch b", timestamp=t0 + timedelta(seconds=2)),
    ]
    request = BatchMemoryRequest(batch_id="b", errors=errors)
    assert len(request.errors) == 5  # storage keeps every record
    distinct = request.distinct_errors()
    assert [(e.index, e.error) for e in distinct] == [
        (-1, "batch a"),
        (-1, "batch b"),
        (1, "x"),
        (3, "retry"),
    ]
