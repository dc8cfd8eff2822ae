"""The fixed cost measured on real processes: an API and a worker (a variant) on their own task queue."""

from __future__ import annotations

import math

import pytest
from temporalio.client import Client

from tests.fixtures.api_server import FlagSetter
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.client import connect
from toolkit.validation.perf import fixed_cost
from toolkit.validation.perf.variants import Variant, running


async def test_fixed_cost_runs_break_down_into_parts_that_add_up(
    settings: Settings, parse: ParseClient, user: ParseUser, set_flags: FlagSetter
) -> None:
    await set_flags(enabled=True, percent=100)
    temporal: Client = await connect(settings)
    async with running(settings, [Variant("test")]) as [variant]:
        runs = await fixed_cost.measure_fixed_cost(
            settings,
            user.session_token,
            runs=2,
            warmup=0,
            api_urls={"test": variant.api_url},
            temporal=temporal,
        )
    assert [(r.run, r.label, r.storage, r.status) for r in runs] == [
        (0, "test", "reference", "completed"),
        (1, "test", "reference", "completed"),
    ]
    for r in runs:
        # Each breakdown adds up to its own total (the intervals telescope; the API keeps remainders).
        assert math.isclose(sum(r.timeline.values()), r.total_ms, abs_tol=1e-6)
        assert math.isclose(sum(r.api.values()), r.submit_ms, abs_tol=1e-6)
        assert {"submit", "wft1.run", "fetch_and_process_batch_memories.run", "wft2.run"} <= set(r.timeline)
        # No webhook_url: no webhook activity and no third workflow task.
        assert not any(
            name.startswith("send_batch_webhook") or name.startswith("wft3") for name in r.timeline
        )
        # The submit's round trips: upload, create, start; workflowId went in with the create.
        assert {"api.file_upload", "api.create", "api.temporal_start"} <= set(r.api)
        assert "api.workflow_id_update" not in r.api
        request = await store.find_batch_request(parse, r.batch_id)
        assert request is not None
        assert request.workflow_id == r.workflow_id == f"batch-{r.batch_id}"
        assert request.workflow_run_id  # recorded by the worker's first write

    summary = {(row.breakdown, row.part): row for row in fixed_cost.summarize(runs)}
    total = summary[("total", "submit_to_final")]
    assert total.runs == 2
    # The median of two runs is their midpoint.
    assert total.p50_ms == pytest.approx((runs[0].total_ms + runs[1].total_ms) / 2)
