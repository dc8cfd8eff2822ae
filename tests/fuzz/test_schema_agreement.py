"""The schema and the server agree on the fields where a fuzzer found them apart (issue 11)."""

from __future__ import annotations

import re

import httpx
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from toolkit.api.app import create_app
from toolkit.parse import ParseClient
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.webhooks import WebhookTargetRefused, check_webhook_url


def _body_schema(settings: Settings) -> dict:
    return create_app(settings).openapi()["components"]["schemas"]["BatchRequestIn"]["properties"]


def _pattern(settings: Settings, field: str) -> str:
    [branch] = [b for b in _body_schema(settings)[field]["anyOf"] if b.get("type") == "string"]
    return branch["pattern"]


def test_schema_refuses_webhook_urls_the_server_refuses(settings: Settings) -> None:
    pattern = _pattern(settings, "webhook_url")
    for url in ["0000", "ftp://example.com/hook", "not a url", "http://", "http://a:0/", "http://a:65536/"]:
        assert not re.fullmatch(pattern, url), url
    for url in ["http://a/", "https://hooks.example.com:8443/x?y=1#z", "http://127.0.0.1:9/h"]:
        assert re.fullmatch(pattern, url), url


def test_every_webhook_url_the_schema_allows_passes_the_servers_structural_check(settings: Settings) -> None:
    pattern = _pattern(settings, "webhook_url")
    refused: list[tuple[str, str]] = []

    @hypothesis_settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.from_regex(pattern, fullmatch=True))
    def check(url: str) -> None:
        try:
            # Private targets allowed, as on the stack: only the URL's form is judged here.
            check_webhook_url(url, allow_private=True)
        except WebhookTargetRefused as exc:
            refused.append((url, str(exc)))

    check()
    assert refused == []


async def test_webhook_secret_with_nul_is_422_not_a_503(
    settings: Settings, parse: ParseClient, user: ParseUser
) -> None:
    # Found by schemathesis: PostgreSQL cannot store NUL in text, Parse answered 500 and the API 503.
    assert re.fullmatch(_pattern(settings, "webhook_secret"), "a\x00b") is None
    async with httpx.AsyncClient(base_url=settings.api_url, timeout=30) as http:
        response = await http.post(
            "/v1/memory/batch",
            json={"memories": [{"content": "x"}], "webhook_secret": "a\x00b"},
            headers={"X-Parse-Session-Token": user.session_token},
        )
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "webhook_secret"]]
    stored = await parse.find(
        "BatchMemoryRequest",
        {"user": {"__type": "Pointer", "className": "_User", "objectId": user.object_id}},
        master=True,
    )
    assert stored == []
