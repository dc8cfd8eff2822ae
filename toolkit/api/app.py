"""The FastAPI application: ``create_app(settings)`` builds it; uvicorn serves it."""

from __future__ import annotations

from fastapi import FastAPI

from toolkit.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="Batch Memory API", version="0.1.0")
    app.state.settings = settings

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
