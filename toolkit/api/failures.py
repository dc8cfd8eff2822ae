"""How a failure of Parse or Temporal becomes the API's answer.

Answers are generic on purpose: the cause (an address, a port, a backend's own error text) goes to the
API's log and never to the client, so an answer maps nothing internal.
"""

from __future__ import annotations

import logging

from temporalio.service import RPCError, RPCStatusCode

from toolkit.api.errors import (
    STORAGE_REFUSED,
    STORAGE_UNAVAILABLE,
    WORKFLOWS_REFUSED,
    WORKFLOWS_UNAVAILABLE,
    ApiError,
    RequestInvalid,
    ServiceUnavailable,
    UpstreamRefused,
)
from toolkit.parse.errors import ParseError, ParseUnavailable
from toolkit.settings import Settings

log = logging.getLogger(__name__)

# Temporal answered these codes because it could not serve the call, not because the call was wrong.
OUTAGE_CODES = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.UNKNOWN,
    RPCStatusCode.ABORTED,
}


def storage_failure(exc: ParseError) -> ApiError:
    """503 when Parse is unreachable, 502 when it refused."""
    if isinstance(exc, ParseUnavailable):
        log.warning("Parse Server unavailable: %s", exc)
        return ServiceUnavailable(STORAGE_UNAVAILABLE)
    log.warning("Parse Server refused a request: %s", exc)
    return UpstreamRefused(STORAGE_REFUSED)


def start_failure(exc: BaseException, settings: Settings) -> ApiError:
    """The answer for a failed workflow start (or a failed question about one)."""
    if isinstance(exc, ParseError):
        return storage_failure(exc)
    if isinstance(exc, RPCError) and exc.status not in OUTAGE_CODES:
        log.warning("Temporal at %s refused a call (%s): %s", settings.temporal_target, exc.status.name, exc)
        return UpstreamRefused(WORKFLOWS_REFUSED)
    log.warning("Temporal at %s unavailable: %s", settings.temporal_target, type(exc).__name__ + f": {exc}")
    return ServiceUnavailable(WORKFLOWS_UNAVAILABLE)


def unstorable(exc: Exception) -> RequestInvalid:
    """422 for a batch storage refused to encode: the caller's bad input, and nothing was stored."""
    # The message names the cause (a codec or pydantic error), never the content it failed on.
    error = {"type": "value_error", "loc": ["body", "memories"], "msg": f"the batch cannot be stored: {exc}"}
    return RequestInvalid([error])
