"""How a stored request becomes the status answer: progress, the estimate, the error cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from toolkit.api.answers import MAX_STATUS_ERRORS, status_from_request
from toolkit.parse.models import BatchError, BatchMemoryRequest, BatchMetadata

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def _request(**fields: object) -> BatchMemoryRequest:
    metadata = BatchMetadata(
        memory_count=1000,
        total_size_bytes=1,
        compressed_size_bytes=1,
        compression_ratio=1.0,
        codec="gzip+json",
        created_at=NOW,
        storage="reference",
    )
    base: dict[str, object] = {"batch_id": "b1", "total_memories": 1000, "batch_metadata": metadata}
    return BatchMemoryRequest.model_validate({**base, **fields})


def test_processing_batch_estimates_completion_from_its_rate_so_far() -> None:
    # 250 of 1,000 in 100 s = 2.5/s; 750 left -> 300 s more.
    request = _request(status="processing", processed_count=250, success_count=240, fail_count=10,
                       started_at=NOW - timedelta(seconds=100))  # fmt: skip
    status = status_from_request(request, NOW)
    assert status.progress_percent == 25.0
    assert (status.processed, status.successful, status.failed) == (250, 240, 10)
    assert status.estimated_completion == NOW + timedelta(seconds=300)
    assert status.storage == "reference"


def test_pending_or_not_yet_progressing_batch_has_no_estimate() -> None:
    assert status_from_request(_request(status="pending"), NOW).estimated_completion is None
    started = _request(status="processing", started_at=NOW - timedelta(seconds=5))
    assert status_from_request(started, NOW).estimated_completion is None


def test_finished_batch_reports_its_completion_time() -> None:
    done = _request(
        status="completed",
        processed_count=1000,
        success_count=1000,
        started_at=NOW - timedelta(seconds=60),
        completed_at=NOW - timedelta(seconds=1),
        webhook_sent=True,
    )
    status = status_from_request(done, NOW)
    assert status.progress_percent == 100.0
    assert status.estimated_completion == status.completed_at == NOW - timedelta(seconds=1)
    assert status.webhook_sent is True


def test_errors_of_an_unbounded_older_request_are_capped_to_the_first_recorded_and_counted() -> None:
    # Stored before the bound (no errorCount): error i happened at second i, so the first 100 are 0..99.
    errors = [BatchError(index=i, error=f"bad {i}", timestamp=NOW + timedelta(seconds=i)) for i in range(150)]
    status = status_from_request(_request(status="partial", errors=errors), NOW)
    assert status.error_count == 150
    assert len(status.errors) == MAX_STATUS_ERRORS == 100
    assert [e.index for e in status.errors] == list(range(100))
    assert status.errors[0].error == "bad 0"


def test_error_count_comes_from_the_counter_beside_the_bounded_sample() -> None:
    sample = [BatchError(index=i, error=f"bad {i}", timestamp=NOW) for i in range(100)]
    status = status_from_request(_request(status="partial", errors=sample, error_count=2_500), NOW)
    assert status.error_count == 2_500
    assert [e.index for e in status.errors] == list(range(100))
