"""The API's error answers: one exception per status, each carrying the message the client sees."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An answer other than success. ``detail`` is what the client reads, so it names the cause."""

    status_code = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class PayloadTooLarge(ApiError):
    status_code = 413


class UnsupportedMediaType(ApiError):
    status_code = 415


class BatchNotFound(ApiError):
    """Unknown batch, or another user's: the same answer for both, so existence never leaks."""

    status_code = 404

    def __init__(self) -> None:
        super().__init__("batch not found")


class RequestTimeout(ApiError):
    """The client stopped sending its body part-way."""

    status_code = 408

    def __init__(self, idle_s: float) -> None:
        super().__init__(
            f"request body stalled: nothing received for {idle_s:g} s", headers={"Connection": "close"}
        )


class IdempotencyConflict(ApiError):
    status_code = 409


class TooManyRequests(ApiError):
    """The caller is over a rate or concurrency limit; ``Retry-After`` says when to try again."""

    status_code = 429

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class UpstreamRefused(ApiError):
    """Parse or Temporal answered, but refused the operation (not an outage)."""

    status_code = 502


class ServiceUnavailable(ApiError):
    """Parse or Temporal cannot be reached; retrying later (with the same Idempotency-Key) is safe."""

    status_code = 503

    def __init__(self, detail: str, *, retry_after_s: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class StartUnconfirmed(ServiceUnavailable):
    """503: the batch is stored but Temporal could not say whether its workflow started. The request is
    kept (and keeps its in-flight slot) until the start is settled (toolkit.api.start_settling)."""

    def __init__(self) -> None:
        super().__init__(START_UNCONFIRMED)


# What a client reads when a backend fails. Generic on purpose: the cause (an address, a port, a
# backend's own error text) is logged server-side and never sent, so answers map nothing internal.
STORAGE_UNAVAILABLE = "the batch store is temporarily unavailable; retry later"
WORKFLOWS_UNAVAILABLE = "the workflow service is temporarily unavailable; retry later"
STORAGE_REFUSED = "the batch store refused the operation"
WORKFLOWS_REFUSED = "the workflow service refused the operation"
START_UNCONFIRMED = (
    "the workflow service did not confirm the start; retry later with the same Idempotency-Key "
    "(a batch that did start is then answered, not started twice)"
)


class RequestInvalid(ApiError):
    """422 with field errors in the shape FastAPI uses: ``[{"type", "loc", "msg", "ctx"?}]``."""

    status_code = 422

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid request body")
        self.errors = errors
