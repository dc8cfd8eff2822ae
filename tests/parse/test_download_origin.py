"""Parse's app id and keys go to the Parse origin only, never to the host a file URL names (S3, a CDN).

A real HTTP server on another origin serves the batch file and records the headers it received.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from toolkit.parse import ParseClient
from toolkit.parse._client import same_origin
from toolkit.settings import Settings

FILE_BYTES = gzip.compress(b'[{"content":"hello","type":"text","metadata":{}}]', mtime=0)


class _FileServer:
    """Serves FILE_BYTES on every GET and keeps the headers of each request (lower-cased names)."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.received.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(FILE_BYTES)))
                self.end_headers()
                self.wfile.write(FILE_BYTES)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> _FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def file_server() -> Iterator[_FileServer]:
    with _FileServer() as server:
        yield server


async def test_download_from_another_origin_sends_no_parse_headers(
    parse: ParseClient, settings: Settings, file_server: _FileServer
) -> None:
    data = await parse.download(f"{file_server.url}/bucket/{settings.parse_app_id}/batch.json.gz")

    assert data == FILE_BYTES
    [headers] = file_server.received
    leaked = sorted(name for name in headers if name.startswith("x-parse-"))
    assert leaked == [], f"Parse headers sent to a foreign origin: {leaked}"
    values = " ".join(headers.values())
    assert settings.parse_rest_api_key not in values
    assert settings.parse_master_key not in values


async def test_download_from_the_parse_origin_still_authenticates(
    parse: ParseClient, settings: Settings, unique: str
) -> None:
    """The Parse origin keeps getting the app id (a server with file access control needs it)."""
    uploaded = await parse.upload_file(f"origin{unique}.json.gz", FILE_BYTES, "application/gzip", master=True)
    try:
        assert await parse.download(uploaded["url"]) == FILE_BYTES
    finally:
        await parse.delete_file(uploaded["name"])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:1337/parse/files/app/x.gz", True),
        ("HTTP://127.0.0.1:1337/other/path", True),
        ("http://127.0.0.1:1338/parse/files/app/x.gz", False),  # another port
        ("https://127.0.0.1:1337/parse/files/app/x.gz", False),  # another scheme
        ("http://localhost:1337/parse/files/app/x.gz", False),  # another host name
        ("http://127.0.0.1:1337@evil.example/parse", False),  # userinfo trick: the host is evil.example
        ("//evil.example/parse/files/app/x.gz", False),  # scheme-relative
    ],
)
def test_same_origin(url: str, expected: bool) -> None:
    assert same_origin(httpx.URL("http://127.0.0.1:1337/parse"), url) is expected


def test_default_ports_are_the_same_origin() -> None:
    assert same_origin(httpx.URL("https://parse.example.com/parse"), "https://parse.example.com:443/x")
    assert not same_origin(httpx.URL("https://parse.example.com/parse"), "http://parse.example.com/x")
