"""A real HTTP webhook receiver: a stdlib ThreadingHTTPServer on 127.0.0.1 (an ephemeral port by default).

It records every request (headers and the raw body bytes exactly as received, and when it arrived),
verifies the signature with :func:`toolkit.webhooks.verify_signature` at receipt time like a real receiver
would, and answers from a script: each request consumes the next :class:`Reply` (HTTP status and headers,
or a hang longer than any sender timeout). ``on_request`` sees each request before it is answered, so a
request the receiver acknowledged has always been seen.

The one receiver of the project: the tests, the fault suite (in a process of its own) and the Locust
scenarios (under gevent, which turns its threads into greenlets) all use it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from toolkit.webhooks import SIGNATURE_HEADER, verify_signature


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must not block shutdown

    def handle_error(self, request: object, client_address: object) -> None:
        # The sender closes the connection once it has the status line; a reset then is expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # never answer; released only when the receiver shuts down


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    signature_valid: bool | None  # None when the receiver has no secret to check with
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class WebhookReceiver:
    def __init__(
        self,
        secret: str | None = None,
        *,
        port: int = 0,
        on_request: Callable[[ReceivedRequest], None] | None = None,
    ) -> None:
        self.secret = secret
        self.requests: list[ReceivedRequest] = []
        self._on_request = on_request
        self._script: list[Reply] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = _QuietServer(("127.0.0.1", port), self._handler_class())
        # A short poll interval keeps shutdown (and so each test's teardown) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="webhook-receiver", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def script(self, *replies: Reply | int | str) -> None:
        """Queue replies: an int is a status, "hang" never answers. Once drained, every request gets 200."""
        queued = [Reply(hang=True) if r == "hang" else Reply(r) if isinstance(r, int) else r for r in replies]
        with self._lock:
            self._script.extend(queued)  # type: ignore[arg-type]

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.pop(0) if self._script else Reply()

    def _record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self.requests.append(request)
            if self._on_request is not None:
                self._on_request(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                header = self.headers.get(SIGNATURE_HEADER)
                valid = None
                if receiver.secret is not None:
                    valid = header is not None and verify_signature(receiver.secret, header, body)
                receiver._record(
                    ReceivedRequest(
                        "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body, valid
                    )
                )
                reply = receiver._next_reply()
                if reply.hang:
                    receiver._release.wait(60)
                    self.close_connection = True
                    return
                payload = b'{"ok":true}'
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # keep test output quiet

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        if self._thread.is_alive():  # shutdown() waits for serve_forever, so only when it runs
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()


@contextmanager
def running_receiver(secret: str | None = None) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(secret)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
