"""Low-level access to one ``BatchMemoryRequest`` object, shared by the modules of this package."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from toolkit.parse._client import ParseClient
from toolkit.parse.models import (
    validate_object_id,
)
from toolkit.parse.schema import BATCH_MEMORY_REQUEST


def validate_ids(**ids: str | None) -> None:
    """Refuse ids that are not plain object ids; the error names the argument."""
    for name, value in ids.items():
        if value is not None:
            try:
                validate_object_id(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None


def utc_now() -> datetime:
    return datetime.now(UTC)


async def update_request(client: ParseClient, request_id: str, body: Mapping[str, Any]) -> None:
    validate_object_id(request_id)
    await client.update_object(BATCH_MEMORY_REQUEST, request_id, body, master=True)


async def read_request_fields(client: ParseClient, request_id: str, keys: str) -> dict[str, Any] | None:
    rows = await client.find(BATCH_MEMORY_REQUEST, {"objectId": request_id}, limit=1, keys=keys, master=True)
    return rows[0] if rows else None
