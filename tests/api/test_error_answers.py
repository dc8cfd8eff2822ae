"""Every 503 the API gives is generic: no Temporal or Parse address, port or backend error text.

Real API processes whose Parse or Temporal is a closed port, or sits behind a real TCP proxy the test
takes down after the session was validated. The detail stays in the API's own log. (The 502 of a
refused start is checked in test_batch_api: exactly WORKFLOWS_REFUSED.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from tests.fixtures.parse_proxy import parse_url_via
from toolkit.api.errors import STORAGE_UNAVAILABLE, WORKFLOWS_UNAVAILABLE
from toolkit.api.idempotency import idempotent_batch_id
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.models import MemoryItem
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.testing.tcp_proxy import TcpProxy
from toolkit.validation.workloads import chitchat_memories

if TYPE_CHECKING:
    from tests.fixtures.api_server import ApiServer

SESSION_UNAVAILABLE = "cannot validate the session right now; retry later"
# What an internal address looks like in any answer: a scheme, a loopback host, a backend's name.
LEAKS = ("127.0.0.1", "localhost", "http://", "Temporal at", "Parse Server at", "/parse", "tcp connect")


def _auth(user: ParseUser) -> dict[str, str]:
    return {"X-Parse-Session-Token": user.session_token}


def _assert_generic(response: httpx.Response, status: int, detail: str, *internal: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"detail": detail}
    for text in (*LEAKS, *internal):
        assert text not in response.text, f"{text!r} leaked in {response.text}"
    if status == 503:
        assert response.headers["Retry-After"].isdigit()


def _port_of(url: str) -> str:
    return str(httpx.URL(url if "://" in url else f"tcp://{url}").port)


async def test_parse_unreachable_while_validating_the_session(
    no_parse_api: ApiServer, http: httpx.AsyncClient, user: ParseUser
) -> None:
    port = _port_of(no_parse_api.settings.parse_url)
    submit = await http.post(
        f"{no_parse_api.url}/v1/memory/batch", json={"memories": chitchat_memories(1)}, headers=_auth(user)
    )
    _assert_generic(submit, 503, SESSION_UNAVAILABLE, port)
    status = await http.get(f"{no_parse_api.url}/v1/batch/{'1' * 32}/status", headers=_auth(user))
    _assert_generic(status, 503, SESSION_UNAVAILABLE, port)
    assert f"127.0.0.1:{port}" in no_parse_api.log_text(), "the operator's log names the cause"


async def test_temporal_unreachable_on_submit_and_on_replay(
    no_temporal_api: ApiServer,
    http: httpx.AsyncClient,
    parse: ParseClient,
    settings: Settings,
    user: ParseUser,
    unique: str,
) -> None:
    port = _port_of(no_temporal_api.settings.temporal_target)
    for _ in range(2):  # the first connect, then the remembered failure
        response = await http.post(
            f"{no_temporal_api.url}/v1/memory/batch",
            json={"memories": chitchat_memories(2)},
            headers=_auth(user),
        )
        _assert_generic(response, 503, WORKFLOWS_UNAVAILABLE, port)

    # A key whose batch was stored but not (yet) started: the API must ask Temporal, which it cannot.
    key = f"ask-{unique}"
    request_id = await store.create_batch_memory_request_in_parse(
        parse,
        settings,
        batch_id=idempotent_batch_id(user.object_id, key),
        submission=store.Submission(user.object_id, idempotency_key=key),
        memories=[MemoryItem.model_validate(m) for m in chitchat_memories(2)],
    )
    try:
        replay = await http.post(
            f"{no_temporal_api.url}/v1/memory/batch",
            json={"memories": chitchat_memories(2)},
            headers={**_auth(user), "Idempotency-Key": key},
        )
        _assert_generic(replay, 503, WORKFLOWS_UNAVAILABLE, port)
    finally:
        await store.delete_batch_request(parse, request_id)
    assert f"127.0.0.1:{port}" in no_temporal_api.log_text()


async def test_parse_lost_after_the_session_was_validated(
    parse_proxy: TcpProxy,
    start_api: Callable[..., ApiServer],
    http: httpx.AsyncClient,
    settings: Settings,
    user: ParseUser,
) -> None:
    api = start_api(PARSE_SERVER_URL=parse_url_via(settings, parse_proxy))
    unknown = await http.get(f"{api.url}/v1/batch/{'2' * 32}/status", headers=_auth(user))
    assert unknown.status_code == 404  # the session is now cached by the API

    parse_proxy.set_mode("down")
    status = await http.get(f"{api.url}/v1/batch/{'2' * 32}/status", headers=_auth(user))
    _assert_generic(status, 503, STORAGE_UNAVAILABLE, str(parse_proxy.port))
    submit = await http.post(
        f"{api.url}/v1/memory/batch", json={"memories": chitchat_memories(2)}, headers=_auth(user)
    )
    _assert_generic(submit, 503, STORAGE_UNAVAILABLE, str(parse_proxy.port))
    assert f"127.0.0.1:{parse_proxy.port}" in api.log_text()
