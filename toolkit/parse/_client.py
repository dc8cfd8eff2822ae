"""A small async client for Parse Server's REST API.

One :class:`ParseClient` per process (it pools connections). Each call authenticates as the app
(app id + REST key) and, per call, either as a user (``session_token=``) or with the master key
(``master=True``). Idempotent calls (GET, PUT, DELETE) are retried on connection errors and 5xx;
POST is retried only when the caller says it is safe (``retry=True``), e.g. creating an object
with a client-chosen objectId.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import httpx

from toolkit.parse.errors import ParseError, ParseUnavailable, error_for
from toolkit.settings import Settings
from toolkit.timing import span

log = logging.getLogger(__name__)

_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    scheme = url.scheme.lower()
    return scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(scheme)


def same_origin(base: httpx.URL, url: str) -> bool:
    """Whether ``url`` has the scheme, host and port of ``base`` (default ports made explicit).

    A relative or scheme-relative URL is never the same origin: file URLs come from Parse (and from
    whatever files adapter it runs, e.g. S3 or a CDN) as absolute URLs, and anything else is refused
    the credentials rather than resolved against a guess.
    """
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    if not target.scheme or not target.host:
        return False
    return _origin(target) == _origin(base)


class ParseClient:
    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_delays_s: tuple[float, ...] = _RETRY_DELAYS_S,
    ) -> None:
        self.settings = settings
        self.base_url = settings.parse_url
        self._retry_delays_s = retry_delays_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            timeout=httpx.Timeout(settings.parse_timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            transport=transport,
        )

    async def __aenter__(self) -> ParseClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- low level ---------------------------------------------------------------------------
    def headers(self, *, session_token: str | None = None, master: bool = False) -> dict[str, str]:
        headers = {"X-Parse-Application-Id": self.settings.parse_app_id}
        if self.settings.parse_rest_api_key:
            headers["X-Parse-REST-API-Key"] = self.settings.parse_rest_api_key
        if master:
            headers["X-Parse-Master-Key"] = self.settings.parse_master_key
        elif session_token:
            headers["X-Parse-Session-Token"] = session_token
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        content_type: str | None = None,
        session_token: str | None = None,
        master: bool = False,
        retry: bool | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON body; raise a :class:`ParseError`."""
        headers = self.headers(session_token=session_token, master=master)
        if extra_headers:
            headers.update(extra_headers)
        if content_type:
            headers["Content-Type"] = content_type
        if retry is None:
            retry = method.upper() in {"GET", "PUT", "DELETE", "HEAD"}
        attempts = len(self._retry_delays_s) + 1 if retry else 1
        for attempt in range(attempts):
            try:
                # Named by method and resource kind (never ids): "parse.POST.files", "parse.PUT.classes".
                with span(f"parse.{method.upper()}.{path.lstrip('/').split('/', 1)[0]}"):
                    response = await self._http.request(
                        method,
                        path.lstrip("/"),
                        json=json_body,
                        params=params,
                        content=content,
                        headers=headers,
                    )
            except httpx.TransportError as exc:
                error: ParseError = self._unreachable(exc)
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                error = error_for(response.status_code, _decode(response))
                if not isinstance(error, ParseUnavailable):
                    raise error
            if attempt + 1 < attempts:
                delay = self._retry_delays_s[attempt]
                log.warning("%s %s failed (%s); retrying in %.1fs", method, path, error, delay)
                await asyncio.sleep(delay)
        raise error

    def _unreachable(self, exc: httpx.TransportError) -> ParseUnavailable:
        """The error for a transport failure: its message names no address (it may reach users).

        The address and the transport's own text go to the log, where an operator reads them.
        """
        log.warning("Parse Server at %s unreachable: %s: %s", self.base_url, type(exc).__name__, exc)
        return ParseUnavailable(f"Parse Server unreachable ({type(exc).__name__})")

    async def download(self, url: str) -> bytes:
        """Fetch a file's bytes by its URL, with the master key (retried: downloads are idempotent).

        Batch, chunk and payload files are readable with the master key only (``parse-server/server.js``).
        The keys go only to the Parse origin (scheme, host and port of ``PARSE_SERVER_URL``). A files
        adapter may hand out URLs on S3 or a CDN, and those hosts must never see Parse's keys: there the
        file is fetched without any Parse header (such an adapter protects its files its own way).
        """
        headers = self.headers(master=True) if same_origin(httpx.URL(self.base_url), url) else {}
        for attempt in range(len(self._retry_delays_s) + 1):
            try:
                response = await self._http.get(url, headers=headers)
            except httpx.TransportError as exc:
                error: ParseError = self._unreachable(exc)
            else:
                if response.status_code < 400:
                    return response.content
                error = error_for(response.status_code, _decode(response))
                if not isinstance(error, ParseUnavailable):
                    raise error
            if attempt < len(self._retry_delays_s):
                await asyncio.sleep(self._retry_delays_s[attempt])
        raise error

    # -- conveniences --------------------------------------------------------------------------
    async def health(self) -> bool:
        try:
            body = await self.request("GET", "health", retry=False)
        except ParseError:
            return False
        return isinstance(body, dict) and body.get("status") == "ok"

    async def get_object(self, class_name: str, object_id: str, **auth: Any) -> dict[str, Any]:
        return await self.request("GET", f"classes/{class_name}/{object_id}", **auth)

    async def create_object(
        self, class_name: str, data: Mapping[str, Any], *, retry: bool = False, **auth: Any
    ) -> dict[str, Any]:
        return await self.request("POST", f"classes/{class_name}", json_body=dict(data), retry=retry, **auth)

    async def update_object(
        self, class_name: str, object_id: str, data: Mapping[str, Any], **auth: Any
    ) -> dict[str, Any]:
        # A PUT body holding objectId renames the object on Parse Server: never send it.
        body = {k: v for k, v in data.items() if k not in {"objectId", "createdAt", "updatedAt"}}
        return await self.request("PUT", f"classes/{class_name}/{object_id}", json_body=body, **auth)

    async def delete_object(self, class_name: str, object_id: str, **auth: Any) -> None:
        await self.request("DELETE", f"classes/{class_name}/{object_id}", **auth)

    async def find(
        self,
        class_name: str,
        where: Mapping[str, Any] | None = None,
        *,
        limit: int = 100,
        skip: int = 0,
        order: str | None = None,
        keys: str | None = None,
        **auth: Any,
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, "skip": skip}
        if where:
            params["where"] = json.dumps(where)
        if order:
            params["order"] = order
        if keys:
            params["keys"] = keys
        body = await self.request("GET", f"classes/{class_name}", params=params, **auth)
        return body["results"]

    async def count(self, class_name: str, where: Mapping[str, Any] | None = None, **auth: Any) -> int:
        params: dict[str, Any] = {"count": 1, "limit": 0}
        if where:
            params["where"] = json.dumps(where)
        body = await self.request("GET", f"classes/{class_name}", params=params, **auth)
        return int(body["count"])

    async def batch(self, requests: list[dict[str, Any]], **auth: Any) -> list[dict[str, Any]]:
        """POST /batch. Returns one ``{"success": …}`` or ``{"error": {"code", "error"}}`` per request.

        Paths in ``requests`` are relative to the mount (``/parse/classes/X``); the caller decides
        whether a repeat is safe (``retry``), typically when every objectId was chosen by the client.
        """
        retry = auth.pop("retry", False)
        return await self.request("POST", "batch", json_body={"requests": requests}, retry=retry, **auth)

    async def transaction(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """POST /batch as one database transaction (master key): every sub-request lands, or none does.

        A rolled-back transaction raises: Parse answers it with a bare 500 (code 1), whatever the cause
        (a duplicate objectId, a missing object, the database), so the caller reads back what it needs
        to tell them apart. Parse also closes the connection after that 500; reused from the pool, the
        connection would fail the next request. The transaction therefore asks for a connection of its
        own (``Connection: close``).
        """
        body = {"requests": requests, "transaction": True}
        results = await self.request(
            "POST", "batch", json_body=body, master=True, extra_headers={"Connection": "close"}
        )
        if isinstance(results, dict):  # a failed transaction may also answer with its one error
            raise error_for(400, results)
        return results

    async def upload_file(self, name: str, data: bytes, content_type: str, **auth: Any) -> dict[str, str]:
        return await self.request("POST", f"files/{name}", content=data, content_type=content_type, **auth)

    async def delete_file(self, name: str) -> None:
        await self.request("DELETE", f"files/{name}", master=True)

    @property
    def mount_path(self) -> str:
        """The URL path Parse is mounted on (``/parse``), used to build ``/batch`` sub-request paths."""
        return httpx.URL(self.base_url).path.rstrip("/") or ""


def _decode(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]
