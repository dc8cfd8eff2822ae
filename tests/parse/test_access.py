"""Who may see a stored batch: its owner, its organization's role, the master key; nobody else.

Raw ParseClient calls with a session token show what Parse itself enforces (ACL, CLP, protectedFields),
independent of any check in the toolkit's code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from toolkit.parse import ObjectNotFound, ParseClient, PermissionDenied
from toolkit.parse import batch_requests as store
from toolkit.parse.users import ParseUser, add_to_org_role
from toolkit.settings import Settings

CreateBatch = Callable[..., Awaitable[str]]
SECRET = "whsec-do-not-leak"
# Parse's answers when a permission refuses (an outage is ParseUnavailable and passes none of these):
# a write refused by the class-level permissions (master key only) is 400 {"code": 119}; a read without
# a session, refused by requiresAuthentication, is 404 {"code": 101, "error": "Permission denied"}.
WRITE_REFUSED = (400, 119)
NO_SESSION = (404, 101, "Parse error 101: Permission denied")


async def test_another_user_cannot_get_find_count_or_update(
    parse: ParseClient, user: ParseUser, other_user: ParseUser, create_batch: CreateBatch
) -> None:
    request_id = await create_batch(webhook_url="https://example.com/hook", webhook_secret=SECRET)
    batch_id = (await parse.get_object("BatchMemoryRequest", request_id, master=True))["batchId"]
    b = {"session_token": other_user.session_token}

    with pytest.raises(ObjectNotFound):
        await parse.get_object("BatchMemoryRequest", request_id, **b)
    assert await parse.find("BatchMemoryRequest", {"batchId": batch_id}, **b) == []
    assert await parse.find("BatchMemoryRequest", {"objectId": request_id}, **b) == []
    assert await parse.count("BatchMemoryRequest", {"batchId": batch_id}, **b) == 0
    with pytest.raises(PermissionDenied) as update:
        await parse.update_object("BatchMemoryRequest", request_id, {"status": "failed"}, **b)
    assert (update.value.status, update.value.code) == WRITE_REFUSED
    with pytest.raises(PermissionDenied) as delete:
        await parse.delete_object("BatchMemoryRequest", request_id, **b)
    assert (delete.value.status, delete.value.code) == WRITE_REFUSED
    assert await store.find_batch_request(parse, batch_id, session_token=other_user.session_token) is None

    # Nothing changed, and the object is still there.
    raw = await parse.get_object("BatchMemoryRequest", request_id, master=True)
    assert raw["status"] == "pending"


async def test_the_owner_reads_it_without_the_webhook_secret(
    parse: ParseClient, user: ParseUser, create_batch: CreateBatch
) -> None:
    request_id = await create_batch(webhook_url="https://example.com/hook", webhook_secret=SECRET)
    a = {"session_token": user.session_token}

    raw = await parse.get_object("BatchMemoryRequest", request_id, **a)
    assert raw["objectId"] == request_id
    assert raw["webhookUrl"] == "https://example.com/hook"
    assert "webhookSecret" not in raw
    [found] = await parse.find("BatchMemoryRequest", {"objectId": request_id}, **a)
    assert "webhookSecret" not in found
    assert SECRET not in str(found)

    request = await store.find_batch_request(parse, raw["batchId"], session_token=user.session_token)
    assert request is not None and request.object_id == request_id
    assert request.webhook_secret is None


async def test_an_org_role_member_can_read_but_not_write(
    parse: ParseClient, other_user: ParseUser, create_batch: CreateBatch, unique: str
) -> None:
    org = f"org{unique}"
    request_id = await create_batch(organization_id=org, webhook_secret=SECRET)
    member = {"session_token": other_user.session_token}
    with pytest.raises(ObjectNotFound):  # not a member yet
        await parse.get_object("BatchMemoryRequest", request_id, **member)

    await add_to_org_role(parse, org, [other_user.object_id])

    raw = await parse.get_object("BatchMemoryRequest", request_id, **member)
    assert raw["objectId"] == request_id
    assert "webhookSecret" not in raw
    assert await parse.count("BatchMemoryRequest", {"objectId": request_id}, **member) == 1
    with pytest.raises(PermissionDenied) as update:  # the role grants read only
        await parse.update_object("BatchMemoryRequest", request_id, {"status": "failed"}, **member)
    assert (update.value.status, update.value.code) == WRITE_REFUSED


async def test_the_master_key_sees_everything_including_the_secret(
    parse: ParseClient, settings: Settings, user: ParseUser, other_user: ParseUser, create_batch: CreateBatch
) -> None:
    mine = await create_batch(webhook_secret=SECRET)
    theirs = await create_batch(user_id=other_user.object_id, webhook_secret=SECRET + "-2")

    for request_id, secret in ((mine, SECRET), (theirs, SECRET + "-2")):
        request = await store.fetch_batch_memory_request_from_parse(
            parse, settings, request_id, with_memories=False
        )
        assert request is not None
        assert request.webhook_secret == secret
        raw = await parse.get_object("BatchMemoryRequest", request_id, master=True)
        assert raw["webhookSecret"] == secret
    # The secret never shows in a repr (logs).
    assert SECRET not in repr(request)

    found = await store.find_batch_request(parse, request.batch_id)
    assert found is not None and found.webhook_secret == SECRET + "-2"


async def test_the_owner_can_neither_update_nor_delete_it(
    parse: ParseClient, user: ParseUser, create_batch: CreateBatch
) -> None:
    request_id = await create_batch()
    a = {"session_token": user.session_token}
    with pytest.raises(PermissionDenied) as update:
        await parse.update_object("BatchMemoryRequest", request_id, {"successCount": 5}, **a)
    assert (update.value.status, update.value.code) == WRITE_REFUSED
    with pytest.raises(PermissionDenied) as delete:
        await parse.delete_object("BatchMemoryRequest", request_id, **a)
    assert (delete.value.status, delete.value.code) == WRITE_REFUSED
    assert (await parse.get_object("BatchMemoryRequest", request_id, master=True))["successCount"] == 0


async def test_anonymous_requests_are_refused(parse: ParseClient, create_batch: CreateBatch) -> None:
    request_id = await create_batch()
    with pytest.raises(ObjectNotFound) as get:
        await parse.get_object("BatchMemoryRequest", request_id)
    assert (get.value.status, get.value.code, str(get.value)) == NO_SESSION
    with pytest.raises(ObjectNotFound) as find:
        await parse.find("BatchMemoryRequest", {"objectId": request_id})
    assert (find.value.status, find.value.code, str(find.value)) == NO_SESSION
