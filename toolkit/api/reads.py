"""Reporting on a batch to its owner: ``GET /v1/batch/{id}/status`` and ``GET /v1/batch/{id}/errors``.

Reads go to Parse with the caller's session, so Parse's ACL hides other users' batches. Parse also lets
``role:org_<id>`` read a batch, so the owner is checked here too: another user's batch is a 404 exactly
like an unknown one (design §4.3).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from toolkit.api.answers import status_from_request
from toolkit.api.auth import AuthenticatedUser, InvalidSession
from toolkit.api.errors import BatchNotFound
from toolkit.api.failures import storage_failure
from toolkit.api.schemas import BATCH_ID_PATTERN, BatchErrorDetailOut, BatchErrorsPage, BatchStatusOut
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.errors import ParseError, PermissionDenied
from toolkit.parse.models import BatchMemoryRequest


class BatchReader:
    def __init__(self, parse: ParseClient) -> None:
        self._parse = parse

    async def status(self, user: AuthenticatedUser, batch_id: str) -> BatchStatusOut:
        request = await self._owned_request(user, batch_id)
        return status_from_request(request, datetime.now(UTC))

    async def errors(
        self, user: AuthenticatedUser, batch_id: str, offset: int, limit: int
    ) -> BatchErrorsPage:
        request = await self._owned_request(user, batch_id)
        if request.error_count is None:
            # Stored before per-memory error objects existed: its ``errors`` array is complete.
            distinct = sorted(request.distinct_errors(), key=lambda e: (e.index, e.timestamp))
            page, total = distinct[offset : offset + limit], len(distinct)
        else:
            try:
                page = await store.find_batch_errors(
                    self._parse, batch_id, offset=offset, limit=limit, session_token=user.session_token
                )
            except PermissionDenied as exc:
                raise InvalidSession("invalid or expired session token") from exc
            except ParseError as exc:
                raise storage_failure(exc) from exc
            total = request.error_count
        return BatchErrorsPage(
            batch_id=batch_id,
            error_count=total,
            offset=offset,
            limit=limit,
            errors=[BatchErrorDetailOut(index=e.index, error=e.error, timestamp=e.timestamp) for e in page],
        )

    async def _owned_request(self, user: AuthenticatedUser, batch_id: str) -> BatchMemoryRequest:
        if re.fullmatch(BATCH_ID_PATTERN, batch_id) is None:
            raise BatchNotFound()
        try:
            # The caller's session: Parse's ACL hides other users' batches (None, exactly like unknown ones).
            request = await store.find_batch_request(self._parse, batch_id, session_token=user.session_token)
        except PermissionDenied as exc:
            raise InvalidSession("invalid or expired session token") from exc
        except ParseError as exc:
            raise storage_failure(exc) from exc
        if request is None or not user.owns(request):
            raise BatchNotFound()
        return request
