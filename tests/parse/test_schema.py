"""`toolkit migrate` against the real Parse Server: idempotent, the schema and permissions of design §4.2,
and moving a deployment from the permissions of before issue 16."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest

from toolkit.parse import ParseClient, PermissionDenied
from toolkit.parse.schema import SCHEMAS, migrate
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings

CreateBatch = Callable[..., Awaitable[str]]


async def test_migrate_twice_changes_nothing(parse: ParseClient, settings: Settings) -> None:
    await migrate(parse, settings)
    assert await migrate(parse, settings) == []


async def test_batch_memory_request_schema_matches_design(parse: ParseClient) -> None:
    live = await parse.request("GET", "schemas/BatchMemoryRequest", master=True)
    fields = live["fields"]
    expected_types = {
        "batchId": "String",
        "requestId": "String",
        "batchDataFile": "File",
        "batchMetadata": "Object",
        "status": "String",
        "totalMemories": "Number",
        "processedCount": "Number",
        "successCount": "Number",
        "failCount": "Number",
        "errors": "Array",
        "workflowId": "String",
        "workflowRunId": "String",
        "webhookUrl": "String",
        "webhookSecret": "String",
        "webhookSent": "Boolean",
        "startedAt": "Date",
        "completedAt": "Date",
        "processingDurationMs": "Number",
    }
    for name, type_ in expected_types.items():
        assert fields[name]["type"] == type_, name
    for name, target in {
        "organization": "Organization",
        "namespace": "Namespace",
        "user": "_User",
        "workspace": "WorkSpace",
    }.items():
        assert fields[name] == {"type": "Pointer", "targetClass": target}
    for index in (
        "BatchMemoryRequest_batchId",
        "BatchMemoryRequest_org_namespace",
        "BatchMemoryRequest_user_status",
        "BatchMemoryRequest_status_createdAt",
    ):
        assert index in live["indexes"], index
    assert "webhookSecret" in live["classLevelPermissions"]["protectedFields"]["*"]


SIGNED_IN = {"requiresAuthentication": True}
NOBODY = {}  # granted to nobody: the master key only (it bypasses class-level permissions)
# Design §4.2: clients read (their ACL decides which rows), only the server writes.
CLIENT_READS = {"find": SIGNED_IN, "get": SIGNED_IN, "count": SIGNED_IN}
SERVER_ONLY = {"find": NOBODY, "get": NOBODY, "count": NOBODY}
SERVER_WRITES = {"create": NOBODY, "update": NOBODY, "delete": NOBODY, "addField": NOBODY}


@pytest.mark.parametrize(
    ("class_name", "reads"),
    [
        ("BatchMemoryRequest", CLIENT_READS),
        ("Memory", CLIENT_READS),
        ("BatchMemoryError", CLIENT_READS),
        ("TemporalPayload", SERVER_ONLY),
        ("BatchSlot", SERVER_ONLY),
        ("BatchSlotHold", SERVER_ONLY),
    ],
)
async def test_every_owned_class_is_written_with_the_master_key_only(
    parse: ParseClient, class_name: str, reads: dict[str, object]
) -> None:
    live = await parse.request("GET", f"schemas/{class_name}", master=True)
    assert set(SCHEMAS[class_name]["fields"]) <= set(live["fields"])
    clp = live["classLevelPermissions"]
    assert {op: clp.get(op) for op in [*reads, *SERVER_WRITES]} == {**reads, **SERVER_WRITES}


async def test_role_creation_is_locked(parse: ParseClient) -> None:
    role = await parse.request("GET", "schemas/_Role", master=True)
    assert role["classLevelPermissions"]["create"] == {}


# What `toolkit migrate` set before issue 16: create, update and delete open to any signed-in user.
OPEN_WRITES = {"create": SIGNED_IN, "update": SIGNED_IN, "delete": SIGNED_IN}


async def test_migrate_closes_the_open_permissions_of_a_deployment_and_says_so(
    parse: ParseClient, settings: Settings, user: ParseUser, create_batch: CreateBatch
) -> None:
    """An existing deployment: open write permissions, and rows whose ACL still gives the owner write."""
    for class_name in ("BatchMemoryRequest", "Memory"):
        opened = {**SCHEMAS[class_name]["classLevelPermissions"], **OPEN_WRITES}
        await parse.request(
            "PUT", f"schemas/{class_name}", json_body={"classLevelPermissions": opened}, master=True
        )
    request_id = await create_batch()
    old_acl = {user.object_id: {"read": True, "write": True}}
    await parse.update_object("BatchMemoryRequest", request_id, {"ACL": old_acl}, master=True)
    mine = {"session_token": user.session_token}
    # The deployment as it was: the owner rewrites their own request.
    await parse.update_object("BatchMemoryRequest", request_id, {"successCount": 1}, **mine)

    changes = await migrate(parse, settings)

    open_to_master = "signed-in users -> master key only"
    assert changes == [
        f"BatchMemoryRequest: class-level permissions: create {open_to_master}; update {open_to_master}; "
        f"delete {open_to_master}",
        f"Memory: class-level permissions: create {open_to_master}; update {open_to_master}; "
        f"delete {open_to_master}",
    ]
    assert await migrate(parse, settings) == []
    # The old row keeps its ACL, and its owner can no longer write it: the class permission refuses first.
    assert (await parse.get_object("BatchMemoryRequest", request_id, master=True))["ACL"] == old_acl
    with pytest.raises(PermissionDenied) as refused:
        await parse.update_object("BatchMemoryRequest", request_id, {"successCount": 2}, **mine)
    assert (refused.value.status, refused.value.code) == (400, 119)


async def test_postgres_indexes_exist(parse: ParseClient, settings: Settings) -> None:
    import subprocess

    from toolkit.stack.postgres import bin_dir

    out = subprocess.run(
        [
            str(bin_dir() / "psql"),
            "-h",
            settings.bind_host,
            "-p",
            str(settings.postgres_port),
            "-U",
            "postgres",
            "-d",
            "parse",
            "-tAc",
            "SELECT indexname FROM pg_indexes WHERE tablename = 'BatchMemoryRequest'",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for index in SCHEMAS["BatchMemoryRequest"]["indexes"]:
        assert index in out


async def test_rollout_flags_are_master_key_only(parse: ParseClient, settings: Settings) -> None:
    config = await parse.request("GET", "config", master=True)
    for key in ("USE_PARSE_BATCH_STORAGE", "PARSE_BATCH_CANARY_PERCENT"):
        assert key in config["params"]
        assert config["masterKeyOnly"][key] is True
    public = httpx.get(f"{settings.parse_url}/config", headers=parse.headers()).json()
    assert "USE_PARSE_BATCH_STORAGE" not in public["params"]


def _request(settings: Settings, method: str, headers: dict[str, str], json: object = None) -> httpx.Response:
    return httpx.request(
        method, f"{settings.parse_url}/classes/BatchMemoryRequest", headers=headers, json=json
    )


def test_anonymous_and_rest_key_only_requests_are_refused(settings: Settings, unique: str) -> None:
    app_only = {"X-Parse-Application-Id": settings.parse_app_id}
    rest_key = {**app_only, "X-Parse-REST-API-Key": settings.parse_rest_api_key}
    # Without the REST key Parse says 403 "unauthorized". With it but no session, a read meets the
    # requiresAuthentication CLP (404, code 101) and a create the master-key-only CLP (400, code 119).
    expected = {
        ("app id only", "GET"): (403, None, "unauthorized"),
        ("app id only", "POST"): (403, None, "unauthorized"),
        ("REST key", "GET"): (404, 101, "Permission denied"),
        ("REST key", "POST"): (400, 119, "Permission denied"),
    }
    for caller, headers in (("app id only", app_only), ("REST key", rest_key)):
        for method, body in (("GET", None), ("POST", {"batchId": unique})):
            response = _request(settings, method, headers, body)
            answer = (response.status_code, response.json().get("code"), response.json().get("error"))
            assert answer == expected[caller, method], (caller, method, answer)
    no_app = httpx.get(f"{settings.parse_url}/classes/BatchMemoryRequest")
    assert no_app.status_code == 403
    master = {**app_only, "X-Parse-Master-Key": settings.parse_master_key}
    found = httpx.get(
        f"{settings.parse_url}/classes/BatchMemoryRequest",
        params={"where": f'{{"batchId": "{unique}"}}'},
        headers=master,
    ).json()["results"]
    assert found == [], "a refused create must not have created anything"
