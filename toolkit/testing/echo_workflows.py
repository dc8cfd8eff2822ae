"""Workflows that are not the toolkit's, with payloads of sizes a test chooses: for the payload audit and the
payload-size metrics.

- ``PayloadEchoWorkflow(data)`` hands ``data`` to the ``echo_payload`` activity and returns the length of
  what came back: a workflow input, an activity input and an activity result of ``len(data)`` bytes each.
- ``PayloadSignalWorkflow()`` waits for one ``note`` signal, hands the note to ``refuse_payload`` (which fails
  for good, with the note as its failure details) and returns the note's length.

Test-only. No import-time side effects: the module is re-imported inside Temporal's workflow sandbox.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.exceptions import ActivityError, ApplicationError

ECHO_WORKFLOW = "PayloadEchoWorkflow"
SIGNAL_WORKFLOW = "PayloadSignalWorkflow"
ECHO_ACTIVITY = "echo_payload"
REFUSE_ACTIVITY = "refuse_payload"


@activity.defn(name=ECHO_ACTIVITY)
async def echo_payload(data: bytes) -> bytes:
    return data


@activity.defn(name=REFUSE_ACTIVITY)
async def refuse_payload(data: bytes) -> None:
    raise ApplicationError("refused on purpose", data, non_retryable=True)


@workflow.defn(name=ECHO_WORKFLOW)
class PayloadEchoWorkflow:
    @workflow.run
    async def run(self, data: bytes) -> int:
        echoed = await workflow.execute_activity(
            echo_payload, data, start_to_close_timeout=timedelta(seconds=60)
        )
        return len(echoed)


@workflow.defn(name=SIGNAL_WORKFLOW)
class PayloadSignalWorkflow:
    def __init__(self) -> None:
        self._note: bytes | None = None

    @workflow.signal
    def note(self, data: bytes) -> None:
        self._note = data

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self._note is not None)
        assert self._note is not None
        try:
            await workflow.execute_activity(
                refuse_payload, self._note, start_to_close_timeout=timedelta(seconds=60)
            )
        except ActivityError:
            pass  # the failure (with the note as details) is in the history: that is the point
        return len(self._note)


ECHO_WORKFLOWS = [PayloadEchoWorkflow, PayloadSignalWorkflow]
ECHO_ACTIVITIES = [echo_payload, refuse_payload]
