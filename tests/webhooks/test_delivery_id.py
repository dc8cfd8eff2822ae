"""Webhooks are delivered at least once, recognisably: a resend carries the same X-Batch-Delivery-Id.

The real receiver, the real Parse Server behind a real TCP proxy, and the real ``send_batch_webhook``
activity (run as Temporal runs an attempt). The receiver takes Parse away the moment the delivery
arrives, so recording ``webhookSent`` fails after a delivery the receiver accepted: the activity waits
the outage out (issue 17) and, once Parse is back, sends the same event again with the same id.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from temporalio.testing import ActivityEnvironment

from tests.fixtures.parse_proxy import via_proxy
from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.models import MemoryItem
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings
from toolkit.temporal.activities import BatchActivities
from toolkit.temporal.batch_types import BatchReference
from toolkit.testing.tcp_proxy import TcpProxy
from toolkit.validation.webhook_receiver import ReceivedRequest, WebhookReceiver
from toolkit.webhooks import DELIVERY_ID_HEADER, delivery_id

SECRET = "delivery-secret"


class _ReceiverThatCutsParse(WebhookReceiver):
    """Takes the proxy down when the first delivery arrives, before answering it 200."""

    def __init__(self, proxy: TcpProxy) -> None:
        super().__init__(SECRET)
        self._proxy = proxy

    def _record(self, request: ReceivedRequest) -> None:
        super()._record(request)
        if len(self.requests) == 1:
            self._proxy.set_mode("down")


async def test_a_delivery_whose_success_was_not_recorded_is_resent_with_the_same_id(
    parse: ParseClient, settings: Settings, user: ParseUser, unique: str, parse_proxy: TcpProxy
) -> None:
    receiver = _ReceiverThatCutsParse(parse_proxy)
    receiver.start()
    batch_id = f"wh{unique}"
    request_id = await store.create_batch_memory_request_in_parse(
        parse,
        settings,
        batch_id=batch_id,
        submission=store.Submission(user.object_id, webhook_url=receiver.url(), webhook_secret=SECRET),
        memories=[MemoryItem(content="one memory")],
    )
    try:
        await store.update_batch_request_completion(
            parse,
            request_id,
            status="completed",
            completed_at=datetime.now(UTC),
            processing_duration_ms=5,
            processed=1,
            successful=1,
            failed=0,
        )
        proxied = via_proxy(settings, parse_proxy, webhook_allow_private=True, webhook_backoff_s=0.05)
        reference = BatchReference(request_id=request_id, batch_id=batch_id)
        env = ActivityEnvironment()
        async with ParseClient(proxied, retry_delays_s=(0.05, 0.05)) as proxied_parse:
            activities = BatchActivities(proxied, proxied_parse)

            # Delivered, then webhookSent cannot be recorded: the activity waits for Parse.
            attempt = asyncio.create_task(env.run(activities.send_batch_webhook, reference))
            deadline = asyncio.get_running_loop().time() + 30
            while not receiver.requests and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(2)
            assert not attempt.done(), "the activity waits while Parse is away"
            assert len(receiver.requests) == 1
            stored = await store.find_batch_request(parse, batch_id)
            assert stored is not None and stored.webhook_sent is False

            parse_proxy.set_mode("forward")
            second = await asyncio.wait_for(attempt, 60)  # run again once Parse answers: sent again
            assert second.delivered is True
            third = await env.run(activities.send_batch_webhook, reference)  # once recorded, never again
            assert third.delivered is True and third.skipped_reason == "already delivered"
    finally:
        receiver.stop()
        await store.delete_batch_request(parse, request_id)

    assert len(receiver.requests) == 2
    ids = [r.headers[DELIVERY_ID_HEADER.lower()] for r in receiver.requests]
    assert ids == [delivery_id(batch_id, "batch.completed")] * 2
    assert [r.signature_valid for r in receiver.requests] == [True, True]
    bodies = [json.loads(r.body) for r in receiver.requests]
    assert bodies[0] == bodies[1] and bodies[0]["batch_id"] == batch_id
    # A receiver can derive the same id from the signed body.
    assert delivery_id(bodies[0]["batch_id"], bodies[0]["event"]) == ids[0]


# Pinned: receivers drop repeats by this id, so a resend after a deploy must carry the id of the first
# delivery. Computed once outside Python, from the documented formula ("whd_" + the first 32 hex digits
# of sha256("<batch_id>:<event>")): printf '%s' 'b1:batch.completed' | openssl dgst -sha256 -r | cut -c1-32
# Never change it: change the function only with a migration note.
PINNED_DELIVERY_ID = "whd_85d9b9c086baa8454c90ab00c1e4980c"


def test_delivery_ids_are_stable_and_distinct_per_batch_and_event() -> None:
    assert delivery_id("b1", "batch.completed") == PINNED_DELIVERY_ID
    assert delivery_id("b1") == PINNED_DELIVERY_ID  # batch.completed is the default event
    assert delivery_id("b1", "batch.completed") != delivery_id("b2", "batch.completed")
    assert delivery_id("b1", "batch.completed") != delivery_id("b1", "batch.failed")
    assert len(delivery_id("b1")) == len("whd_") + 32 and delivery_id("b1").startswith("whd_")
    with pytest.raises(ValueError):
        delivery_id("")
