"""A workflow that only measures its input: the smallest history a large input can leave behind.

Test-only (the external storage tests start it with a 5 MB input). No import-time side effects: the
module is re-imported inside Temporal's workflow sandbox.
"""

from __future__ import annotations

from temporalio import workflow

PAYLOAD_SIZE_WORKFLOW = "PayloadSizeWorkflow"


@workflow.defn(name=PAYLOAD_SIZE_WORKFLOW)
class PayloadSizeWorkflow:
    @workflow.run
    async def run(self, data: bytes) -> int:
        return len(data)
