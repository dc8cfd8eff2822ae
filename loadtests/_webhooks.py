"""The run's webhook receiver (:mod:`toolkit.validation.webhook_receiver`) and the verdict on one batch's
delivery.

Locust has patched the process with gevent: the receiver's threads are greenlets, and waiting yields.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime

import gevent
from _plan import WEBHOOK_GRACE_S

from toolkit.validation.webhook_receiver import ReceivedRequest, WebhookReceiver


def _batch_of(request: ReceivedRequest) -> tuple[str, str | None]:
    try:
        payload = json.loads(request.body)
        return str(payload["batch_id"]), payload.get("status")
    except (ValueError, KeyError, TypeError):
        return "", None


class WebhookCheck:
    """Receives the batch webhooks on 127.0.0.1 and judges each batch's delivery."""

    def __init__(self) -> None:
        self.secret = secrets.token_urlsafe(32)
        self._receiver = WebhookReceiver(self.secret)

    def start(self) -> None:
        self._receiver.start()

    @property
    def url(self) -> str:
        return self._receiver.url("/batch-webhook")

    def _deliveries(self, batch_id: str) -> list[tuple[ReceivedRequest, str | None]]:
        found = []
        for request in list(self._receiver.requests):
            delivered_id, status = _batch_of(request)
            if delivered_id == batch_id:
                found.append((request, status))
        return found

    def outcome(self, batch_id: str, status: str, completed_at: datetime | None) -> tuple[str, float | None]:
        """Wait for the batch's delivery: ``(outcome, delay_ms)``, outcome one of ok, missing, late,
        bad signature, wrong status."""
        reference = completed_at or datetime.now(UTC)
        deadline = time.monotonic() + WEBHOOK_GRACE_S
        while not self._deliveries(batch_id) and time.monotonic() < deadline:
            gevent.sleep(0.1)
        deliveries = self._deliveries(batch_id)
        if not deliveries:
            return "missing", None
        first, first_status = deliveries[0]
        delay_ms = (first.received_at - reference).total_seconds() * 1000
        if not all(request.signature_valid for request, _ in deliveries):
            return "bad signature", delay_ms
        if first_status != status:
            return "wrong status", delay_ms
        if delay_ms > WEBHOOK_GRACE_S * 1000:
            return "late", delay_ms
        return "ok", delay_ms
