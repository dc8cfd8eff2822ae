"""The FastAPI application: ``create_app(settings)`` builds it; uvicorn serves it.

One ParseClient and one (lazily connected) Temporal client per app, made in the lifespan. The
routes are thin: :mod:`toolkit.api.body` reads and validates, :mod:`toolkit.api.batches` acts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from toolkit.api.auth import AuthenticatedUser, Authenticator, AuthError, current_user
from toolkit.api.batches import BatchService
from toolkit.api.errors import ApiError, RequestInvalid
from toolkit.api.prometheus import ApiMetrics, MetricsMiddleware
from toolkit.api.schemas import (
    ERRORS_PAGE_DEFAULT,
    ERRORS_PAGE_MAX,
    IDEMPOTENCY_KEY_PATTERN,
    BatchAccepted,
    BatchErrorsPage,
    BatchRequestIn,
    BatchStatusOut,
    ErrorOut,
    ValidationErrorOut,
)
from toolkit.api.temporal_connection import TemporalConnection
from toolkit.parse import ParseClient
from toolkit.rollout import RolloutReader
from toolkit.settings import Settings
from toolkit.timing import HEADER, collect

DESCRIPTION = """Batch memory ingestion (claim-check on Parse, processed by Temporal workers).

Authenticate with a Parse session token: `X-Parse-Session-Token: r:…` or `Authorization: Bearer r:…`.
"""

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or invalid session token"},
    503: {"model": ErrorOut, "description": "Parse Server or Temporal unreachable; nothing was left pending"},
}


class ServerTimingMiddleware:
    """Adds ``Server-Timing`` to every HTTP answer: the request's Parse and Temporal round trips, in ms.

    Pure ASGI (no extra task per request); names and durations only, so it is safe to expose.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with collect() as timings:

            async def send_with_timing(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = MutableHeaders(scope=message)
                    headers.append(HEADER, timings.header())
                await send(message)

            await self.app(scope, receive, send_with_timing)


def _services(request: Request) -> BatchService:
    return request.app.state.batches


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        parse = ParseClient(settings)
        temporal = TemporalConnection(settings)
        temporal.connect_in_background()
        rollout = RolloutReader(parse, settings)
        app.state.parse = parse
        app.state.temporal = temporal
        app.state.rollout = rollout
        app.state.authenticator = Authenticator(parse)
        app.state.batches = BatchService(settings, parse, temporal, rollout)
        try:
            yield
        finally:
            await app.state.batches.aclose()
            await temporal.aclose()
            await parse.aclose()

    app = FastAPI(title="Batch Memory API", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.add_middleware(ServerTimingMiddleware)
    metrics = ApiMetrics()
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        if isinstance(exc, RequestInvalid):
            return JSONResponse({"detail": exc.errors}, status_code=422)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {"Retry-After": "5"}
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code, headers=headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # For the operator's Prometheus, not for API clients: left out of the OpenAPI document.
    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post(
        "/v1/memory/batch",
        status_code=202,
        response_model=BatchAccepted,
        summary="Submit a batch of memories",
        responses={
            **_ERRORS,
            409: {
                "model": ErrorOut,
                "description": "Idempotency-Key of a submission still being started: retry shortly",
            },
            413: {
                "model": ErrorOut,
                "description": "too many memories, or too many bytes (on the legacy path: a workflow "
                "input over LEGACY_MAX_INPUT_BYTES, 2 MiB minus 64 KiB)",
            },
            415: {"model": ErrorOut, "description": "not a plain JSON body"},
            429: {
                "model": ErrorOut,
                "description": "too many batches in flight for this user (MAX_BATCHES_IN_FLIGHT); "
                "see Retry-After",
            },
            422: {"model": ValidationErrorOut, "description": "invalid body: the field errors"},
        },
        # The body is read by hand (size-capped), so its schema is declared here for /docs.
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchRequestIn"}}},
            }
        },
    )
    async def submit_batch(
        request: Request,
        response: Response,
        user: Annotated[AuthenticatedUser, Depends(current_user)],
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                pattern=IDEMPOTENCY_KEY_PATTERN,
                description="the same user and key return the first answer; nothing is created twice",
            ),
        ] = None,
    ) -> BatchAccepted:
        # The body is read as it arrives (a batch may be hundreds of megabytes): see toolkit.api.body.
        accepted, replayed = await _services(request).submit_streamed(user, request, idempotency_key)
        response.headers["Location"] = accepted.status_url
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        else:
            metrics.batch_accepted(accepted.storage, accepted.total_memories)
        return accepted

    @app.get(
        "/v1/batch/{batch_id}/status",
        response_model=BatchStatusOut,
        summary="Progress of a batch",
        responses={**_ERRORS, 404: {"model": ErrorOut, "description": "unknown batch, or another user's"}},
    )
    async def batch_status(
        batch_id: str, request: Request, user: Annotated[AuthenticatedUser, Depends(current_user)]
    ) -> BatchStatusOut:
        return await _services(request).status(user, batch_id)

    @app.get(
        "/v1/batch/{batch_id}/errors",
        response_model=BatchErrorsPage,
        summary="Per-memory errors of a batch, paged",
        responses={**_ERRORS, 404: {"model": ErrorOut, "description": "unknown batch, or another user's"}},
    )
    async def batch_errors(
        batch_id: str,
        request: Request,
        user: Annotated[AuthenticatedUser, Depends(current_user)],
        offset: Annotated[int, Query(ge=0, le=10_000_000, description="errors to skip")] = 0,
        limit: Annotated[
            int, Query(ge=1, le=ERRORS_PAGE_MAX, description=f"page size, at most {ERRORS_PAGE_MAX}")
        ] = ERRORS_PAGE_DEFAULT,
    ) -> BatchErrorsPage:
        return await _services(request).errors(user, batch_id, offset, limit)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            body = BatchRequestIn.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(body.pop("$defs", {}))
            components["BatchRequestIn"] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
