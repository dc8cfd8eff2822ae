"""Who is calling: a Parse session token, validated against Parse and cached briefly (design §4.3).

The token comes as ``X-Parse-Session-Token: r:…`` or ``Authorization: Bearer r:…``. Parse decides
whether it is valid (``GET users/me``); the answer is cached for :data:`SESSION_TTL_S` seconds so a
burst of requests costs one round trip. The cache is keyed by a SHA-256 of the token and holds only
the user id: a memory dump of the API never yields a usable session.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from toolkit.parse import ParseClient
from toolkit.parse.errors import ObjectNotFound, ParseError, ParseUnavailable, PermissionDenied
from toolkit.parse.models import BatchMemoryRequest

log = logging.getLogger(__name__)

# A revoked session keeps working for at most this long in each API process.
SESSION_TTL_S = 30.0
SESSION_CACHE_SIZE = 10_000
# Parse tokens are ~40 characters; anything far longer is not one and is not worth a round trip.
MAX_TOKEN_LENGTH = 512

HOW_TO_AUTHENTICATE = (
    "send a Parse session token as 'X-Parse-Session-Token: r:…' or 'Authorization: Bearer r:…'"
)


class AuthError(Exception):
    """Authentication did not succeed; ``status_code`` is what the API answers."""

    status_code = 401


class MissingSession(AuthError):
    pass


class InvalidSession(AuthError):
    pass


class AuthUnavailable(AuthError):
    """Parse could not be asked: the caller may be fine, so this is a 503, not a 401."""

    status_code = 503


@dataclass(frozen=True)
class AuthenticatedUser:
    user_id: str
    session_token: str

    def owns(self, request: BatchMemoryRequest) -> bool:
        """Whether ``request`` is this user's batch. Parse's ACL also lets the organization's role read
        it; the API answers a batch to its owner only (design §4.3)."""
        return request.user is not None and request.user.object_id == self.user_id


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class SessionCache:
    """A bounded LRU of token digest → (user id, expiry)."""

    def __init__(self, *, ttl_s: float = SESSION_TTL_S, max_entries: int = SESSION_CACHE_SIZE) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        user_id, expires = entry
        if time.monotonic() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return user_id

    def put(self, key: str, user_id: str) -> None:
        self._entries[key] = (user_id, time.monotonic() + self._ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class Authenticator:
    def __init__(self, parse: ParseClient, cache: SessionCache | None = None) -> None:
        self._parse = parse
        self.cache = cache or SessionCache()
        # One Parse round trip per token at a time, however many requests arrive together.
        self._inflight: dict[str, asyncio.Future[str]] = {}

    async def authenticate(self, token: str | None) -> AuthenticatedUser:
        if not token:
            raise MissingSession(f"missing session token: {HOW_TO_AUTHENTICATE}")
        if len(token) > MAX_TOKEN_LENGTH or not token.isprintable() or " " in token:
            raise InvalidSession("invalid session token")
        key = _token_key(token)
        user_id = self.cache.get(key)
        if user_id is None:
            pending = self._inflight.get(key)
            if pending is None:
                pending = asyncio.ensure_future(self._validate(token))
                self._inflight[key] = pending
                pending.add_done_callback(lambda _f: self._inflight.pop(key, None))
            user_id = await asyncio.shield(pending)
            self.cache.put(key, user_id)
        return AuthenticatedUser(user_id=user_id, session_token=token)

    async def _validate(self, token: str) -> str:
        try:
            me = await self._parse.request("GET", "users/me", session_token=token)
        except (PermissionDenied, ObjectNotFound) as exc:
            raise InvalidSession("invalid or expired session token") from exc
        except ParseUnavailable as exc:
            log.warning("session check: Parse Server unavailable: %s", exc)
            raise AuthUnavailable("cannot validate the session right now; retry later") from exc
        except ParseError as exc:
            # Parse's own error text stays in the log: the answer names nothing internal.
            log.warning("session check: unexpected answer from Parse: %s", exc)
            raise AuthUnavailable("cannot validate the session right now; retry later") from exc
        user_id = me.get("objectId") if isinstance(me, dict) else None
        if not user_id:
            raise InvalidSession("invalid session token")
        return str(user_id)


def token_from_headers(
    session_header: str | None, authorization: HTTPAuthorizationCredentials | None
) -> str | None:
    if session_header:
        return session_header.strip()
    if authorization is not None and authorization.credentials:
        return authorization.credentials.strip()
    return None


# Declared as security schemes so /docs offers an "Authorize" button for either form.
session_token_header = APIKeyHeader(
    name="X-Parse-Session-Token", auto_error=False, description="A Parse session token (r:…)."
)
bearer_token = HTTPBearer(auto_error=False, description="The same Parse session token, as a bearer token.")


async def current_user(
    request: Request,
    session_header: Annotated[str | None, Security(session_token_header)],
    authorization: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_token)],
) -> AuthenticatedUser:
    """FastAPI dependency: the authenticated caller, or an :class:`AuthError` (mapped to 401/503)."""
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.authenticate(token_from_headers(session_header, authorization))
