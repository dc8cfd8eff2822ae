"""The FastAPI application: ``create_app(settings)`` builds it; uvicorn serves it.

One ParseClient and one (lazily connected) Temporal client per app, made in the lifespan. The
routes are thin: :mod:`toolkit.api.body` reads and validates, :mod:`toolkit.api.batches` acts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from toolkit.api.auth import AuthenticatedUser, Authenticator, AuthError, current_user
from toolkit.api.batches import BatchService
from toolkit.api.body import read_batch
from toolkit.api.errors import ApiError, RequestInvalid
from toolkit.api.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    BatchAccepted,
    BatchRequestIn,
    BatchStatusOut,
    ErrorOut,
    ValidationErrorOut,
)
from toolkit.api.temporal import TemporalConnection
from toolkit.parse import ParseClient
from toolkit.rollout import RolloutReader
from toolkit.settings import Settings

DESCRIPTION = """Batch memory ingestion (claim-check on Parse, processed by Temporal workers).

Authenticate with a Parse session token: `X-Parse-Session-Token: r:…` or `Authorization: Bearer r:…`.
"""

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or invalid session token"},
    503: {"model": ErrorOut, "description": "Parse Server or Temporal unreachable; nothing was left pending"},
}


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
            await temporal.aclose()
            await parse.aclose()

    app = FastAPI(title="Batch Memory API", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings

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
        batch = await read_batch(request, settings)
        accepted, replayed = await _services(request).submit(user, batch, idempotency_key)
        response.headers["Location"] = accepted.status_url
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
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
