"""Webhook payload, signing, verification, SSRF refusal and delivery, against a real local HTTP receiver.

Delivery tests POST to a stdlib HTTP server on 127.0.0.1 (:mod:`toolkit.validation.webhook_receiver`), so they
use allow_private=True. The only httpx transports that are not real are `GuardTransport` (proves that a
refused target gets no request at all, and that nothing ever leaves this machine) and, for one test, a
recording transport standing in for a public receiver, which a local machine cannot provide.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import re
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest

from tests.fixtures.worker_process import wait_until
from toolkit.validation.webhook_receiver import Reply, WebhookReceiver, running_receiver
from toolkit.webhooks import (
    SIGNATURE_HEADER,
    DeliveryResult,
    WebhookError,
    WebhookTargetRefused,
    _backoff_delay,
    _check_addresses,
    _parse_target,
    _pinned_request,
    _tls_context,
    check_webhook_url,
    completion_payload,
    deliver_webhook,
    encode_body,
    sign,
    verify_signature,
)

SECRET = "whsec_test_7f3a9c2e"
# Quick retries. The timeout only bounds a receiver that hangs: a local reply never takes 30 s, so the
# exact attempt counts hold however loaded the machine is. The test of a hanging receiver sets a short
# timeout of its own (there every attempt ends at the timeout, whatever its length).
FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 30.0}


class GuardTransport(httpx.AsyncBaseTransport):
    """Records and refuses every request: a test using it proves no request was made (or sees which)."""

    def __init__(self, reply: int | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.reply = reply

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.reply is None:
            raise httpx.ConnectError("GuardTransport: no request may be sent in this test", request=request)
        return httpx.Response(self.reply)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with running_receiver(secret=SECRET) as running:
        yield running


def payload(batch_id: str = "batch-123", status: str = "completed") -> dict[str, object]:
    return completion_payload(
        batch_id=batch_id,
        status=status,
        total=10,
        successful=9 if status == "partial" else 10,
        failed=1 if status == "partial" else 0,
        completed_at=datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    )


# ---- payload -------------------------------------------------------------------------------------------


def test_completion_payload_has_exactly_the_contract_keys_and_utc_z_time() -> None:
    body = completion_payload(
        batch_id="b1",
        status="partial",
        total=3,
        successful=2,
        failed=1,
        completed_at=datetime(2025, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
    )
    assert body == {
        "event": "batch.completed",
        "batch_id": "b1",
        "status": "partial",
        "total": 3,
        "successful": 2,
        "failed": 1,
        "completed_at": "2025-01-02T03:04:05.000Z",
    }


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "processing"},  # not a final status: a completion event cannot carry it
        {"total": -1},
        {"failed": True},
        {"completed_at": datetime(2025, 1, 1)},  # naive: no defined instant
    ],
)
def test_completion_payload_rejects_values_outside_the_contract(changes: dict[str, object]) -> None:
    arguments: dict[str, object] = {
        "batch_id": "b1",
        "status": "completed",
        "total": 1,
        "successful": 1,
        "failed": 0,
        "completed_at": datetime.now(UTC),
    }
    with pytest.raises(ValueError):
        completion_payload(**{**arguments, **changes})  # type: ignore[arg-type]


def test_encode_body_is_compact_deterministic_json() -> None:
    first = encode_body(payload())
    assert first == encode_body(payload())
    assert b" " not in first
    assert json.loads(first) == payload()


# ---- sign / verify -----------------------------------------------------------------------------------------


# Pinned: receivers verify with their own code, so the bytes sent and the MAC over them must never
# change under them. The body is the payload() above as encode_body writes it; the MAC was computed
# once outside Python, from the documented scheme (HMAC-SHA256 over "<t>." + the raw body):
#   printf '%s' "1700000000.$BODY" | openssl dgst -sha256 -hmac whsec_test_7f3a9c2e
PINNED_BODY = (
    b'{"event":"batch.completed","batch_id":"batch-123","status":"completed","total":10,'
    b'"successful":10,"failed":0,"completed_at":"2025-01-02T03:04:05.678Z"}'
)
PINNED_HEADER = "t=1700000000,v1=aea8e7e19f79f1e7a522b2f07e65ddde807ab41270ea73e18a8c723d2e1473df"


def test_sign_is_hmac_sha256_over_timestamp_dot_raw_body() -> None:
    body = encode_body(payload())
    assert body == PINNED_BODY
    header = sign(SECRET, body, 1_700_000_000)
    assert header == PINNED_HEADER
    assert SECRET not in header


def test_verify_accepts_the_pinned_signature_and_only_for_its_exact_bytes() -> None:
    assert verify_signature(SECRET, PINNED_HEADER, PINNED_BODY, now=1_700_000_000)
    assert not verify_signature(
        SECRET, PINNED_HEADER, PINNED_BODY.replace(b":10,", b":11,"), now=1_700_000_000
    )
    assert not verify_signature(SECRET + "x", PINNED_HEADER, PINNED_BODY, now=1_700_000_000)


def test_verify_accepts_a_fresh_valid_signature_and_rejects_tampering() -> None:
    body = encode_body(payload())
    now = 1_700_000_000
    header = sign(SECRET, body, now)
    assert verify_signature(SECRET, header, body, now=now + 10)
    assert not verify_signature(SECRET, header, body.replace(b"completed", b"failed\x20\x20\x20"), now=now)
    assert not verify_signature(SECRET, header, body + b" ", now=now)
    assert not verify_signature("another-secret", header, body, now=now)
    assert not verify_signature("", header, body, now=now)


def test_verify_refuses_timestamps_outside_the_tolerance_both_ways() -> None:
    body = encode_body(payload())
    header = sign(SECRET, body, 1_700_000_000)
    assert verify_signature(SECRET, header, body, tolerance_s=300, now=1_700_000_300)
    assert not verify_signature(SECRET, header, body, tolerance_s=300, now=1_700_000_301)  # replayed late
    assert not verify_signature(SECRET, header, body, tolerance_s=300, now=1_699_999_699)  # from the future
    # Changing t to look fresh breaks the MAC, because t is signed.
    fresh = header.replace("t=1700000000", "t=1700000900")
    assert not verify_signature(SECRET, fresh, body, tolerance_s=300, now=1_700_000_900)


def test_verify_accepts_any_matching_v1_entry_for_secret_rotation() -> None:
    body = encode_body(payload())
    t = int(time.time())
    old, new = sign("old-secret", body, t), sign("new-secret", body, t)
    both = f"{old},v1={new.split('v1=')[1]}"
    assert verify_signature("old-secret", both, body)
    assert verify_signature("new-secret", both, body)
    assert not verify_signature("third-secret", both, body)
    # Spacing and unknown future schemes are tolerated.
    assert verify_signature("new-secret", both.replace(",", ", ") + ",v2=abc", body)


GARBAGE_HEADERS = [
    "",
    "garbage",
    "t=,v1=",
    "t=abc,v1=" + "0" * 64,
    "v1=" + "0" * 64,
    "t=1700000000",
    "t=1700000000,v1=xyz",
    "t=1700000000,v1=" + "0" * 63,
    "t=1700000000,t=1700000000,v1=" + "0" * 64,
    "t=-5,v1=" + "0" * 64,
    "t=1700000000,v1=" + "é" * 64,  # non-ASCII: hmac.compare_digest would raise on it as str
    "t=1700000000,v1=" + "0" * 64 + "," * 10_000,
    "t=1700000000;v1=" + "0" * 64,
    "\x00\xff,==,=,",
    "t=99999999999999999999999,v1=" + "0" * 64,
]


@pytest.mark.parametrize("header", GARBAGE_HEADERS)
def test_verify_returns_false_on_garbage_and_never_raises(header: str) -> None:
    assert verify_signature(SECRET, header, b"{}", now=1_700_000_000) is False


@pytest.mark.parametrize("header", [None, b"t=1,v1=00", 12345])
def test_verify_returns_false_for_non_string_headers(header: object) -> None:
    assert verify_signature(SECRET, header, b"{}") is False  # type: ignore[arg-type]


# ---- target checks --------------------------------------------------------------------------------

REFUSED_ALWAYS = ["ftp://example.com/hook", "file:///etc/passwd", "http:///hook", "http://", "not a url", ""]
REFUSED_UNLESS_PRIVATE = [
    "http://127.0.0.1/hook",
    "http://10.0.0.1/hook",
    "http://[::1]/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://localhost/hook",
    "http://0.0.0.0/hook",
    "http://192.168.1.20/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://224.0.0.1/hook",
    "http://240.0.0.1/hook",
    "http://100.64.0.1/hook",
    "http://0x7f000001/hook",  # hex spelling of 127.0.0.1: caught because the name is resolved
    "http://127.1/hook",
]


@pytest.mark.parametrize("url", REFUSED_ALWAYS)
@pytest.mark.parametrize("allow_private", [False, True])
def test_check_refuses_bad_schemes_and_missing_hosts(url: str, allow_private: bool) -> None:
    with pytest.raises(WebhookTargetRefused) as refused:
        check_webhook_url(url, allow_private=allow_private)
    assert "webhook" in str(refused.value)
    assert isinstance(refused.value, WebhookError)


@pytest.mark.parametrize("url", REFUSED_UNLESS_PRIVATE)
def test_check_refuses_non_public_targets_unless_allowed(url: str) -> None:
    with pytest.raises(WebhookTargetRefused, match="address"):
        check_webhook_url(url, allow_private=False)
    check_webhook_url(url, allow_private=True)


def test_check_names_the_reason_and_the_setting() -> None:
    with pytest.raises(WebhookTargetRefused) as refused:
        check_webhook_url("http://169.254.169.254/", allow_private=False)
    assert "link-local" in str(refused.value)
    assert "WEBHOOK_ALLOW_PRIVATE" in str(refused.value)
    with pytest.raises(WebhookTargetRefused, match="'localhost' resolves to 127.0.0.1.*loopback"):
        check_webhook_url("http://localhost:8080/", allow_private=False)


def test_check_accepts_a_public_address_literal() -> None:
    check_webhook_url("https://93.184.216.34/hook", allow_private=False)
    check_webhook_url("https://[2606:2800:220:1:248:1893:25c8:1946]:8443/hook", allow_private=False)


def test_check_refuses_an_unresolvable_host() -> None:
    with pytest.raises(WebhookTargetRefused, match="cannot be resolved"):
        check_webhook_url("https://hooks.nonexistent.invalid/hook", allow_private=False)


def test_a_name_with_one_private_address_among_public_ones_is_refused() -> None:
    # DNS rebinding: a name answering a public and an internal address is refused whichever comes first.
    public, internal = ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.1.2.3")
    _check_addresses("hooks.example.com", [public])
    for order in ([public, internal], [internal, public]):
        with pytest.raises(WebhookTargetRefused, match="10.1.2.3"):
            _check_addresses("hooks.example.com", order)


def test_pinned_request_connects_to_the_checked_address_but_keeps_host_and_sni() -> None:
    target = _parse_target("https://hooks.example.com:8443/path/hook?token=abc")
    url, headers, extensions = _pinned_request(target, ipaddress.ip_address("93.184.216.34"))
    assert str(url) == "https://93.184.216.34:8443/path/hook?token=abc"
    assert headers == {"Host": "hooks.example.com:8443"}
    assert extensions == {"sni_hostname": "hooks.example.com"}
    v6_url, _, _ = _pinned_request(
        _parse_target("http://hooks.example.com/h"), ipaddress.ip_address("2606:2800:220:1::1")
    )
    assert str(v6_url) == "http://[2606:2800:220:1::1]/h"


# ---- delivery against the real receiver ------------------------------------------------------------------


async def test_delivers_signed_exact_bytes_with_the_contract_headers(receiver: WebhookReceiver) -> None:
    body = payload()
    result = await deliver_webhook(receiver.url(), SECRET, body, allow_private=True, **FAST)

    assert result == DeliveryResult(True, 1, 200, None, result.duration_ms)
    assert result.duration_ms > 0
    [seen] = receiver.requests
    assert seen.method == "POST" and seen.path == "/hook"
    assert seen.signature_valid is True
    assert seen.body == encode_body(body)  # the bytes received are the bytes signed
    assert json.loads(seen.body) == body
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["user-agent"] == "batch-memory-toolkit"
    header = seen.headers[SIGNATURE_HEADER.lower()]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    # The raw secret is in no header at all, not only not in the signature.
    assert all(SECRET not in value for value in seen.headers.values())
    timestamp = int(header.split(",")[0][2:])
    assert header == sign(SECRET, seen.body, timestamp)


async def test_two_failures_then_success_is_delivered_on_the_third_attempt(
    receiver: WebhookReceiver,
) -> None:
    receiver.script(500, 503, 200)
    result = await deliver_webhook(receiver.url(), SECRET, payload(), allow_private=True, **FAST)

    assert result.delivered is True
    assert result.attempts == 3
    assert result.status_code == 200
    assert result.error is None
    assert len(receiver.requests) == 3
    assert all(seen.signature_valid for seen in receiver.requests)
    assert len({seen.body for seen in receiver.requests}) == 1


async def test_a_receiver_that_never_answers_is_given_up_after_max_attempts(
    receiver: WebhookReceiver,
) -> None:
    receiver.script("hang", "hang", "hang")
    result = await deliver_webhook(
        receiver.url(), SECRET, payload(), allow_private=True, max_attempts=3, **{**FAST, "timeout_s": 0.2}
    )

    assert result.delivered is False
    assert result.attempts == 3
    assert result.status_code is None
    assert result.error is not None and "timed out" in result.error

    # Each attempt was sent before it timed out; the receiver reads it even after the sender gave up.
    async def all_attempts_arrived() -> bool:
        return len(receiver.requests) >= 3

    await wait_until(all_attempts_arrived, 30, "the three attempts at the receiver")
    assert len(receiver.requests) == 3
    assert all(seen.signature_valid for seen in receiver.requests)


async def test_persistent_5xx_uses_every_attempt_and_reports_the_last_status(
    receiver: WebhookReceiver,
) -> None:
    receiver.script(*[502] * 4)
    result = await deliver_webhook(
        receiver.url(), SECRET, payload(), allow_private=True, max_attempts=4, **FAST
    )
    assert (result.delivered, result.attempts, result.status_code) == (False, 4, 502)
    assert result.error == "HTTP 502"
    assert len(receiver.requests) == 4


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
async def test_a_4xx_rejection_is_final(receiver: WebhookReceiver, status: int) -> None:
    receiver.script(status)
    result = await deliver_webhook(receiver.url(), SECRET, payload(), allow_private=True, **FAST)
    assert (result.delivered, result.attempts, result.status_code) == (False, 1, status)
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [408, 429])
async def test_408_and_429_are_retried(receiver: WebhookReceiver, status: int) -> None:
    receiver.script(status, 200)
    result = await deliver_webhook(receiver.url(), SECRET, payload(), allow_private=True, **FAST)
    assert (result.delivered, result.attempts, result.status_code) == (True, 2, 200)
    assert len(receiver.requests) == 2


async def test_429_with_retry_after_is_retried(receiver: WebhookReceiver) -> None:
    receiver.script(Reply(429, {"Retry-After": "0"}), 200)
    result = await deliver_webhook(receiver.url(), SECRET, payload(), allow_private=True, **FAST)
    assert (result.delivered, result.attempts) == (True, 2)


async def test_redirects_are_not_followed(receiver: WebhookReceiver) -> None:
    receiver.script(Reply(302, {"Location": receiver.url("/elsewhere")}))
    result = await deliver_webhook(receiver.url(), SECRET, payload(), allow_private=True, **FAST)
    assert (result.delivered, result.attempts, result.status_code) == (False, 1, 302)
    assert [seen.path for seen in receiver.requests] == ["/hook"]


async def test_other_2xx_codes_count_as_delivered(receiver: WebhookReceiver) -> None:
    receiver.script(204)
    result = await deliver_webhook(receiver.url(), SECRET, payload(), allow_private=True, **FAST)
    assert (result.delivered, result.status_code) == (True, 204)


@pytest.mark.parametrize("secret", [None, ""])
async def test_without_a_secret_the_request_is_unsigned(
    receiver: WebhookReceiver, secret: str | None
) -> None:
    result = await deliver_webhook(receiver.url(), secret, payload(), allow_private=True, **FAST)
    assert result.delivered is True
    [seen] = receiver.requests
    assert SIGNATURE_HEADER.lower() not in seen.headers
    assert seen.signature_valid is False  # the receiver, holding a secret, rejects an unsigned request


async def test_loopback_receiver_is_allowed_by_name_with_allow_private(receiver: WebhookReceiver) -> None:
    result = await deliver_webhook(
        receiver.url(host="localhost"), SECRET, payload(), allow_private=True, **FAST
    )
    assert result.delivered is True
    assert len(receiver.requests) == 1


async def test_a_closed_port_is_a_connection_error_and_retried() -> None:
    closed = WebhookReceiver()  # bound then closed without serving: nothing listens on its port any more
    url = closed.url()
    closed.stop()
    result = await deliver_webhook(url, SECRET, payload(), allow_private=True, max_attempts=2, **FAST)
    assert (result.delivered, result.attempts, result.status_code) == (False, 2, None)
    assert result.error is not None and "ConnectError" in result.error


# ---- refusal before anything is sent ----------------------------------------------------------------------


async def test_loopback_targets_are_refused_and_the_receiver_sees_nothing(receiver: WebhookReceiver) -> None:
    # Each of these would reach the running receiver (or its port) if anything were sent.
    for host in ("127.0.0.1", "localhost", "[::1]", "0x7f000001", "127.1"):
        result = await deliver_webhook(
            receiver.url(host=host), SECRET, payload(), allow_private=False, **FAST
        )
        assert (result.delivered, result.attempts, result.status_code) == (False, 0, None), host
        assert result.error is not None and "loopback" in result.error
    assert receiver.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "http:///hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/hook",
    ],
)
async def test_refused_targets_get_no_request_at_all(url: str) -> None:
    guard = GuardTransport()
    result = await deliver_webhook(url, SECRET, payload(), allow_private=False, transport=guard, **FAST)
    assert (result.delivered, result.attempts, result.status_code) == (False, 0, None)
    assert result.error
    assert guard.requests == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/hook", "file:///tmp/hook", "http:///hook"])
async def test_bad_schemes_are_refused_even_with_allow_private(url: str) -> None:
    guard = GuardTransport()
    result = await deliver_webhook(url, SECRET, payload(), allow_private=True, transport=guard, **FAST)
    assert (result.delivered, result.attempts) == (False, 0)
    assert guard.requests == []


async def test_an_unresolvable_host_is_retried_without_sending() -> None:
    guard = GuardTransport()
    result = await deliver_webhook(
        "https://hooks.nonexistent.invalid/hook",
        SECRET,
        payload(),
        allow_private=False,
        max_attempts=2,
        transport=guard,
        **FAST,
    )
    assert (result.delivered, result.attempts, result.status_code) == (False, 2, None)
    assert result.error is not None and "cannot resolve" in result.error
    assert guard.requests == []


async def test_a_public_target_is_pinned_to_its_checked_address() -> None:
    # A public receiver cannot exist on this machine, so a recording transport stands in for it.
    public = GuardTransport(reply=200)
    result = await deliver_webhook(
        "https://93.184.216.34:8443/hook?token=abc", SECRET, payload(), allow_private=False, transport=public
    )
    assert (result.delivered, result.attempts) == (True, 1)
    [request] = public.requests
    assert request.url.host == "93.184.216.34"
    assert request.headers["host"] == "93.184.216.34:8443"
    assert verify_signature(SECRET, request.headers[SIGNATURE_HEADER], request.content)


# ---- logging and backoff --------------------------------------------------------------------------------


async def test_each_attempt_is_logged_without_secret_or_body(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script(500, 200)
    marker = "batch-logcheck-5d1e"
    with caplog.at_level(logging.DEBUG, logger="toolkit.webhooks"):
        result = await deliver_webhook(
            receiver.url("/hook/path-token-91c"), SECRET, payload(batch_id=marker), allow_private=True, **FAST
        )
    assert result.attempts == 2
    attempt_lines = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert len(attempt_lines) == 2
    assert "HTTP 500" in attempt_lines[0] and "HTTP 200" in attempt_lines[1]
    assert SECRET not in caplog.text
    assert marker not in caplog.text  # nothing from the body
    assert "path-token-91c" not in caplog.text  # URL paths can hold tokens: only scheme://host:port


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt, step in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 10.0), (12, 10.0)]:
        delays = [_backoff_delay(attempt, 0.5, 10.0, rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1  # jittered, not a fixed schedule


async def test_max_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError):
        await deliver_webhook("http://127.0.0.1/", SECRET, payload(), allow_private=True, max_attempts=0)


def test_every_delivery_shares_one_tls_context_that_still_verifies_the_receiver() -> None:
    """Issue 19: one TLS context per process (httpx loaded the CA bundle for every delivery, ~14 ms of
    CPU each). Shared, it must still check the receiver's certificate and host name."""
    context = _tls_context()
    assert context is _tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.get_ca_certs() or context.cert_store_stats()["x509_ca"] > 0, "no CA loaded"
