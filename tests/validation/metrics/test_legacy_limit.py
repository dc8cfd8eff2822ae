"""The legacy failure point, found by starting real workflows on the real server (nothing runs)."""

from __future__ import annotations

from temporalio.client import Client, WorkflowExecutionStatus

from toolkit.settings import Settings
from toolkit.validation.metrics import find_legacy_failure_point

LIMIT = 2 * 1024 * 1024  # Temporal's blob limit (limit.blobSize.error), verified in the field notes


async def test_the_server_refuses_the_first_batch_past_2_mib_with_its_own_words(
    settings: Settings, temporal: Client
) -> None:
    # 15,000-byte memories (the API's maximum): the limit falls at ~140 memories.
    point = await find_legacy_failure_point(
        settings, workload="synthetic", max_memories=400, temporal=temporal, content_bytes=15_000
    )
    print(
        point.largest_ok, point.ok_input_bytes, point.smallest_failing, point.failing_input_bytes, point.error
    )
    assert point.smallest_failing == point.largest_ok + 1
    assert point.ok_input_bytes <= LIMIT < point.failing_input_bytes
    assert point.error == "Blob data size exceeds limit."
    assert len(point.probes) == 2  # the guess from the documented limit was right: one start each side


async def test_a_wrong_guess_is_corrected_by_the_server(settings: Settings, temporal: Client) -> None:
    # Told to expect 100 KB less, the search gallops up from there; the server still decides.
    point = await find_legacy_failure_point(
        settings,
        workload="synthetic",
        max_memories=400,
        temporal=temporal,
        expected_limit_bytes=LIMIT - 100_000,
        content_bytes=15_000,
    )
    assert point.ok_input_bytes <= LIMIT < point.failing_input_bytes
    assert point.smallest_failing == point.largest_ok + 1 and len(point.probes) > 2
    frame = point.probes_frame()
    assert frame.started.tolist() == sorted(frame.started.tolist(), reverse=True)  # ok below, refused above


async def test_nothing_is_left_running_and_a_batch_under_the_limit_has_no_failure_point(
    settings: Settings, temporal: Client
) -> None:
    point = await find_legacy_failure_point(
        settings, workload="synthetic", max_memories=50, temporal=temporal, content_bytes=1_000
    )
    assert (point.largest_ok, point.smallest_failing, point.error) == (50, None, None)
    (probe,) = point.probes
    assert probe.started
    description = await temporal.get_workflow_handle(probe.workflow_id).describe()
    assert description.status == WorkflowExecutionStatus.TERMINATED
