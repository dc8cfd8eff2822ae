"""Session validation against the real Parse Server, and the short-lived cache in front of it."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from toolkit.api.auth import Authenticator, InvalidSession, MissingSession, SessionCache
from toolkit.parse import ParseClient
from toolkit.parse.users import ParseUser, sign_up
from toolkit.settings import Settings
from toolkit.testing.cued_transport import CuedTransport


async def test_valid_session_is_accepted_then_served_from_the_cache(parse: ParseClient) -> None:
    user: ParseUser = await sign_up(parse)
    cached = Authenticator(parse)
    assert (await cached.authenticate(user.session_token)).user_id == user.object_id

    await parse.request("POST", "logout", session_token=user.session_token)
    # Within the TTL the cached answer stands (one Parse round trip per token per TTL)...
    again = await cached.authenticate(user.session_token)
    assert (again.user_id, again.session_token) == (user.object_id, user.session_token)
    # ...while a process without the entry asks Parse, which now refuses the session.
    with pytest.raises(InvalidSession):
        await Authenticator(parse).authenticate(user.session_token)


async def test_concurrent_requests_with_one_token_agree(parse: ParseClient) -> None:
    user = await sign_up(parse)
    auth = Authenticator(parse)
    results = await asyncio.gather(*(auth.authenticate(user.session_token) for _ in range(20)))
    assert {r.user_id for r in results} == {user.object_id}
    assert len(auth.cache) == 1


@pytest.mark.parametrize("token", [None, ""])
async def test_missing_token_says_how_to_send_one(parse: ParseClient, token: str | None) -> None:
    with pytest.raises(MissingSession, match="X-Parse-Session-Token"):
        await Authenticator(parse).authenticate(token)


@pytest.mark.parametrize("token", ["r:" + "a" * 600, "r:has space", "r:\x00null"])
async def test_malformed_token_is_refused_without_asking_parse(settings: Settings, token: str) -> None:
    counting = CuedTransport()  # no cue: it only records what is sent
    async with ParseClient(settings, transport=counting) as parse:
        with pytest.raises(InvalidSession):
            await Authenticator(parse).authenticate(token)
        assert counting.sent == []
        # The same client does ask Parse about a well-formed token (which Parse does not know).
        with pytest.raises(InvalidSession):
            await Authenticator(parse).authenticate("r:" + "a" * 32)
    assert [r.url.path for r in counting.sent] == [f"{httpx.URL(settings.parse_url).path}/users/me"]


def test_cache_is_bounded_and_expires() -> None:
    cache = SessionCache(ttl_s=60, max_entries=3)
    for i in range(4):
        cache.put(f"digest-{i}", f"user-{i}")
    assert len(cache) == 3
    assert cache.get("digest-0") is None  # the least recently used went first
    assert cache.get("digest-3") == "user-3"

    expired = SessionCache(ttl_s=0)
    expired.put("digest", "user")
    assert expired.get("digest") is None


async def test_the_cache_never_holds_the_token(parse: ParseClient) -> None:
    user = await sign_up(parse)
    auth = Authenticator(parse)
    await auth.authenticate(user.session_token)
    entries = dict(auth.cache._entries)
    assert len(entries) == 1
    [(key, (user_id, _expires))] = entries.items()
    # Keyed by a digest (64 hex digits), holding the user id alone: the token is nowhere in it, not
    # even its random part without the "r:" prefix.
    assert re.fullmatch(r"[0-9a-f]{64}", key) and user_id == user.object_id
    assert user.session_token.removeprefix("r:") not in repr(entries)
