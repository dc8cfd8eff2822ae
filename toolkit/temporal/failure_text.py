"""What a batch's owner reads when its processing gave up: the failure's type and a fixed, safe sentence.

The workflow copies a failure into the batch-level error and into every ``not processed: chunk k ...``
error, which ``GET /v1/batch/{id}/status`` and ``/errors`` return. An exception's own message may name
a server address, a file name, a Parse error body: those stay in the worker's log and in the workflow
history (operators read both), and the owner reads only the text chosen here. Pure and deterministic:
the workflow calls it.
"""

from __future__ import annotations

from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError

# The failure type of an activity that waited out an outage of Parse for OUTAGE_RETRY_S and gave up
# (toolkit.temporal.outages).
OUTAGE_TOO_LONG = "ParseUnavailableTooLong"

# Failure types our activities raise, and what the owner is told about each.
SAFE_MESSAGES: dict[str, str] = {
    OUTAGE_TOO_LONG: "the batch store stayed unavailable past the outage retry limit (OUTAGE_RETRY_S)",
    "CorruptBatchFile": "the stored batch file could not be read",
    "BatchRequestMissing": "the batch's request is missing",
    "InvalidBatchRequest": "the batch's request is invalid",
    "ParseUnavailable": "the batch store was unavailable; retries were exhausted",
    "PayloadMissing": "a stored workflow payload is missing",
    "PayloadIntegrityError": "a stored workflow payload failed verification",
    "MalformedClaim": "a stored workflow payload could not be found",
}
TIMED_OUT = "ActivityTimeout: processing timed out; retries were exhausted"
CANCELLED = "Cancelled: processing was cancelled"
INTERNAL = "InternalError: the batch could not be processed"


def failure_text(error: ActivityError) -> str:
    """``"<type>: <safe message>"`` for an activity that gave up; never the exception's own message."""
    cause = error.cause
    if isinstance(cause, TimeoutError):
        return TIMED_OUT
    if isinstance(cause, CancelledError):
        return CANCELLED
    kind = cause.type if isinstance(cause, ApplicationError) else None
    if kind in SAFE_MESSAGES:
        return f"{kind}: {SAFE_MESSAGES[kind]}"
    return INTERNAL
