"""Batch-completion webhooks: payload, signing, receiver-side verification, SSRF checks and delivery.

Independent of Temporal and Parse on purpose: the activity that calls `deliver_webhook` owns the
`webhookSent` bookkeeping, and receivers can import `verify_signature` without the rest of the toolkit.

Signature scheme (design §4.5): `X-Batch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>." + raw body bytes)>`. The timestamp is inside the MAC so a captured request cannot be replayed
later with a new timestamp, and the MAC covers the exact bytes on the wire, never a re-serialisation.

Delivery is at least once: `X-Batch-Delivery-Id` names the event (derived from batch id and event), so
every attempt and every resend of one event carries the same id and receivers can drop repeats.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import re
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from toolkit.parse.models import FINISHED_STATUSES

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Batch-Signature"
DELIVERY_ID_HEADER = "X-Batch-Delivery-Id"
USER_AGENT = "batch-memory-toolkit"
EVENT_BATCH_COMPLETED = "batch.completed"
# The final statuses of the one status vocabulary (design §4.2); a completion event carries one of them.
COMPLETION_STATUSES = frozenset(FINISHED_STATUSES)

_ALLOWED_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")
# A real header is ~80 bytes per v1 entry; anything far larger is garbage or abuse, not rotation.
_MAX_SIGNATURE_HEADER_CHARS = 4096

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookError(Exception):
    """Base class of webhook errors."""


class WebhookTargetRefused(WebhookError):
    """The webhook URL is not an allowed target (bad scheme, no host, or a non-public address)."""


@dataclass
class DeliveryResult:
    delivered: bool
    attempts: int
    status_code: int | None
    error: str | None
    duration_ms: float


# ---- payload and signature --------------------------------------------------------------------------------


def _iso_utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        # A naive datetime has no defined instant; guessing would silently shift the event time.
        raise ValueError("completed_at must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def completion_payload(
    *, batch_id: str, status: str, total: int, successful: int, failed: int, completed_at: datetime
) -> dict[str, Any]:
    """The `batch.completed` event body (design §4.5). Fixed key order keeps its encoding deterministic."""
    if status not in COMPLETION_STATUSES:
        raise ValueError(f"status must be one of {sorted(COMPLETION_STATUSES)}, got {status!r}")
    if not batch_id:
        raise ValueError("batch_id must be non-empty")
    return {
        "event": EVENT_BATCH_COMPLETED,
        "batch_id": batch_id,
        "status": status,
        "total": _count("total", total),
        "successful": _count("successful", successful),
        "failed": _count("failed", failed),
        "completed_at": _iso_utc(completed_at),
    }


def delivery_id(batch_id: str, event: str = EVENT_BATCH_COMPLETED) -> str:
    """The `X-Batch-Delivery-Id` of ``event`` for ``batch_id``: the same on every attempt and resend.

    ``whd_`` plus 32 hex digits of sha256(``"<batch_id>:<event>"``). Derived, not random, so a delivery
    repeated by a retried activity (or after a worker crash) is recognisably the same one.
    """
    if not batch_id or not event:
        raise ValueError("batch_id and event must be non-empty")
    return "whd_" + hashlib.sha256(f"{batch_id}:{event}".encode()).hexdigest()[:32]


def encode_body(payload: dict[str, Any]) -> bytes:
    """Compact, ASCII-only, strict JSON: the same payload always gives the same bytes."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _mac(secret: str, body: bytes, timestamp: int) -> str:
    message = f"{timestamp}.".encode("ascii") + bytes(body)
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `X-Batch-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    if not secret:
        raise ValueError("cannot sign with an empty secret")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError(f"timestamp must be non-negative unix seconds, got {timestamp!r}")
    return f"t={timestamp},v1={_mac(secret, body, timestamp)}"


def _parse_signature_header(header: str) -> tuple[int, list[str]] | None:
    """`(timestamp, [v1 digests])`, or None when the header is malformed in any way."""
    if len(header) > _MAX_SIGNATURE_HEADER_CHARS:
        return None
    timestamp: int | None = None
    digests: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return None
        key, value = key.strip(), value.strip()
        if key == "t":
            # Two timestamps would make it ambiguous which one the MAC covers.
            if timestamp is not None or not _UNIX_SECONDS.fullmatch(value):
                return None
            timestamp = int(value)
        elif key == "v1":
            digest = value.lower()
            if not _HEX_SHA256.fullmatch(digest):
                return None
            digests.append(digest)
        # Unknown schemes (a future v2, say) are ignored so senders can add them without breaking receivers.
    if timestamp is None or not digests:
        return None
    return timestamp, digests


def verify_signature(
    secret: str, header: str, body: bytes, tolerance_s: int = 300, *, now: float | None = None
) -> bool:
    """Check an `X-Batch-Signature` header against the raw request body, as a receiver.

    False (never an exception) for a malformed header, a wrong MAC, or a timestamp more than
    `tolerance_s` seconds away from `now` (replay protection). Any one matching `v1=` entry is enough,
    so a sender can sign with the old and the new secret while a secret is being rotated.

    Deliveries are **at least once**: a delivery whose success could not be recorded (the worker died,
    or Parse failed right after the receiver answered 2xx) is sent again, with a fresh signature
    timestamp. Every attempt of one event carries the same `X-Batch-Delivery-Id` header (see
    :func:`delivery_id`), so a receiver processes an event once by remembering the ids it has handled
    and answering 2xx to a repeat without acting on it. The id is not covered by the MAC; a receiver
    that wants a signed key can derive the same id from the signed body: ``delivery_id(body["batch_id"],
    body["event"])``.
    """
    if not isinstance(secret, str) or not secret or not isinstance(header, str):
        return False
    if not isinstance(body, bytes | bytearray | memoryview):
        return False
    parsed = _parse_signature_header(header)
    if parsed is None:
        return False
    timestamp, digests = parsed
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, bytes(body), timestamp).encode("ascii")
    matched = False
    for digest in digests:
        # Constant-time per candidate; compare all of them so the timing does not tell which one matched.
        matched |= hmac.compare_digest(expected, digest.encode("ascii"))
    return matched


# ---- target checks (SSRF) -----------------------------------------------------------------------------


def _refusal_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:127.0.0.1 reaches 127.0.0.1; judge the IPv4 address it carries.
        address = address.ipv4_mapped
    for flag, reason in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(address, flag):
            return reason
    if not address.is_global:
        # Shared (100.64/10), documentation and other special ranges: not reachable on the public internet.
        return "non-global"
    return None


def _check_addresses(host: str, addresses: list[IPAddress]) -> None:
    """Refuse if ANY address is non-public: a name that also resolves to an internal address is a
    DNS-rebinding foothold, whichever address the client would happen to pick."""
    if not addresses:
        raise WebhookTargetRefused(f"webhook host {host!r} resolved to no address")
    for address in addresses:
        reason = _refusal_reason(address)
        if reason is not None:
            shown = host if host == str(address) else f"{host!r} resolves to {address}, which"
            raise WebhookTargetRefused(
                f"webhook target refused: {shown} is a {reason} address "
                "(set WEBHOOK_ALLOW_PRIVATE=1 to allow private targets)"
            )


@dataclass(frozen=True)
class _Target:
    url: httpx.URL
    host: str  # ASCII (IDNA) host, IPv6 without brackets: what gets resolved and connected to
    port: int


def _parse_target(url: str) -> _Target:
    """Structural checks only: scheme and host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise WebhookTargetRefused(f"webhook URL is malformed: {exc}") from exc
    if parsed.scheme not in _ALLOWED_SCHEMES:
        raise WebhookTargetRefused(
            f"webhook URL scheme {parsed.scheme or '(none)'!r} refused: only http and https are allowed"
        )
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise WebhookTargetRefused("webhook URL has no host")
    return _Target(parsed, host, parsed.port or _DEFAULT_PORTS[parsed.scheme])


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _addresses_from_addrinfo(infos: list[tuple[Any, ...]]) -> list[IPAddress]:
    # sockaddr[0] may carry an IPv6 scope ("fe80::1%eth0"); ipaddress accepts that form.
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """Raise WebhookTargetRefused unless `url` is an acceptable webhook target.

    Only http(s) with a host. Unless `allow_private`, the host is resolved (every address) and refused if
    any address is loopback, private, link-local, reserved, multicast, unspecified or otherwise non-global.
    Blocking (DNS); async code should use `deliver_webhook`, which resolves without blocking the loop.
    """
    target = _parse_target(url)
    if allow_private:
        return
    literal = _literal_address(target.host)
    if literal is not None:
        _check_addresses(target.host, [literal])
        return
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookTargetRefused(f"webhook host {target.host!r} cannot be resolved: {exc}") from exc
    _check_addresses(target.host, _addresses_from_addrinfo(infos))


async def _resolve_public(target: _Target) -> IPAddress:
    """Resolve without blocking the event loop, refuse non-public results, and return the address to pin.

    Raises socket.gaierror when resolution fails (retryable) and WebhookTargetRefused (final)."""
    literal = _literal_address(target.host)
    if literal is not None:
        _check_addresses(target.host, [literal])
        return literal
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    addresses = _addresses_from_addrinfo(infos)
    _check_addresses(target.host, addresses)
    return addresses[0]


def _pinned_request(target: _Target, address: IPAddress) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """Connect to the address that was checked instead of letting the client resolve the name again
    (a second lookup could answer with an internal address: DNS rebinding). The Host header and, for
    https, the TLS SNI/certificate name stay those of the original host."""
    url = target.url.copy_with(host=str(address))
    headers = {"Host": target.url.netloc.decode("ascii")}
    extensions: dict[str, Any] = {}
    if target.url.scheme == "https":
        extensions["sni_hostname"] = target.host
    return url, headers, extensions


def _redacted(target: _Target) -> str:
    """Scheme, host and port only: paths and queries of webhook URLs often embed tokens."""
    return f"{target.url.scheme}://{target.url.netloc.decode('ascii')}"


# ---- delivery -------------------------------------------------------------------------------------------


def _retryable_status(status: int) -> bool:
    return status in (408, 429) or 500 <= status <= 599


def _backoff_delay(attempt: int, backoff_s: float, max_backoff_s: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random, so concurrent senders
    spread out but never retry immediately."""
    step = min(max_backoff_s, backoff_s * (2 ** (attempt - 1)))
    return step / 2 + rng.uniform(0, step / 2)


def _retry_after_s(value: str | None, max_backoff_s: float) -> float | None:
    """Seconds a 429/503 asks us to wait (delta-seconds or HTTP-date), capped at max_backoff_s."""
    if not value:
        return None
    value = value.strip()
    seconds: float | None = None
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), max_backoff_s)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context per process for every delivery: httpx builds a new one for each client, loading
    the CA bundle each time, about 14 ms of CPU per webhook (issue 19). The same verification: the
    default CAs, no settings from the environment (like ``trust_env=False`` on the client)."""
    return httpx.create_ssl_context(trust_env=False)


async def deliver_webhook(
    url: str,
    secret: str | None,
    payload: dict[str, Any],
    *,
    allow_private: bool,
    max_attempts: int = 5,
    backoff_s: float = 0.5,
    max_backoff_s: float = 10.0,
    timeout_s: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
    delivery_id: str | None = None,
) -> DeliveryResult:
    """POST `payload` to `url`, signed, with retries. Never raises for delivery failures: the result says.

    Retried: timeouts, connection errors, DNS failures, 408, 429 and 5xx. Final: any other status
    (redirects are not followed; a 4xx means the receiver rejected the request). Delivered only on 2xx.
    ``delivery_id`` (see :func:`delivery_id`) is sent as `X-Batch-Delivery-Id` on every attempt.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    started = time.perf_counter()

    def result(delivered: bool, attempts: int, status: int | None, error: str | None) -> DeliveryResult:
        return DeliveryResult(delivered, attempts, status, error, (time.perf_counter() - started) * 1000)

    try:
        target = _parse_target(url)
    except WebhookTargetRefused as exc:
        log.warning("webhook refused before sending: %s", exc)
        return result(False, 0, None, str(exc))
    shown = _redacted(target)
    body = encode_body(payload)  # encoded once: every attempt sends, and signs, these exact bytes
    rng = random.Random()
    attempts = 0
    status_code: int | None = None
    error: str | None = None

    # trust_env=False: no proxy or .netrc credentials from the environment may be attached to a request
    # whose destination the sender's caller chose.
    async with httpx.AsyncClient(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout_s),
        verify=_tls_context(),
    ) as client:
        while attempts < max_attempts:
            pinned: IPAddress | Exception | None = None
            if not allow_private:
                try:
                    # Checked again on every attempt; _attempt then connects to the address checked here.
                    pinned = await _resolve_public(target)
                except WebhookTargetRefused as exc:
                    log.warning("webhook to %s refused after %d attempt(s): %s", shown, attempts, exc)
                    return result(False, attempts, status_code, str(exc))
                except (OSError, UnicodeError) as exc:
                    pinned = exc  # a failed lookup is transient: counted as an attempt, then retried
            attempts += 1
            attempt_started = time.perf_counter()
            if isinstance(pinned, Exception):
                status_code, retry_after = None, None
                error = f"cannot resolve {target.host!r}: {pinned}"
            else:
                status_code, retry_after, error = await _attempt(
                    client, target, pinned, body, secret, timeout_s, max_backoff_s, delivery_id
                )
            log.info(
                "webhook attempt %d/%d to %s: %s (%.0f ms)",
                attempts,
                max_attempts,
                shown,
                error or f"HTTP {status_code}",
                (time.perf_counter() - attempt_started) * 1000,
            )
            if status_code is not None and 200 <= status_code <= 299:
                return result(True, attempts, status_code, None)
            if status_code is not None and not _retryable_status(status_code):
                return result(False, attempts, status_code, error)
            if attempts < max_attempts:
                delay = _backoff_delay(attempts, backoff_s, max_backoff_s, rng)
                await asyncio.sleep(max(delay, retry_after or 0.0))
    log.warning("webhook to %s not delivered after %d attempt(s): %s", shown, attempts, error)
    return result(False, attempts, status_code, error)


async def _attempt(
    client: httpx.AsyncClient,
    target: _Target,
    pinned: IPAddress | None,
    body: bytes,
    secret: str | None,
    timeout_s: float,
    max_backoff_s: float,
    delivery_id: str | None = None,
) -> tuple[int | None, float | None, str | None]:
    """One POST. Returns (status code or None, Retry-After seconds or None, error or None)."""
    url = target.url
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if delivery_id:
        headers[DELIVERY_ID_HEADER] = delivery_id
    extensions: dict[str, Any] = {}
    if pinned is not None:
        url, pin_headers, extensions = _pinned_request(target, pinned)
        headers.update(pin_headers)
    if secret:
        # A fresh timestamp per attempt, so a late retry still fits the receiver's replay window.
        headers[SIGNATURE_HEADER] = sign(secret, body, int(time.time()))
    try:
        # asyncio.timeout bounds the whole attempt; httpx's timeout is per connect/read/write, so a
        # receiver dripping bytes could otherwise hold an attempt open indefinitely.
        async with asyncio.timeout(timeout_s):
            request = client.build_request("POST", url, content=body, headers=headers, extensions=extensions)
            # Streamed and closed unread: the response body is irrelevant and could be huge.
            response = await client.send(request, stream=True)
            await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        return None, None, f"timed out after {timeout_s:g} s"
    except httpx.TransportError as exc:
        return None, None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    status = response.status_code
    retry_after = _retry_after_s(response.headers.get("Retry-After"), max_backoff_s)
    return status, retry_after, None if 200 <= status <= 299 else f"HTTP {status}"
