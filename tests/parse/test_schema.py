"""`toolkit migrate` against the real Parse Server: idempotent, and the schema of design §4.2."""

from __future__ import annotations

import httpx

from toolkit.parse import ParseClient
from toolkit.parse.schema import SCHEMAS, migrate
from toolkit.settings import Settings


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
    clp = live["classLevelPermissions"]
    for op in ("find", "get", "count", "create", "update", "delete"):
        assert clp[op] == {"requiresAuthentication": True}, op
    assert clp["addField"] == {}
    assert "webhookSecret" in clp["protectedFields"]["*"]


async def test_memory_class_and_role_lock(parse: ParseClient) -> None:
    memory = await parse.request("GET", "schemas/Memory", master=True)
    assert set(SCHEMAS["Memory"]["fields"]) <= set(memory["fields"])
    role = await parse.request("GET", "schemas/_Role", master=True)
    assert role["classLevelPermissions"]["create"] == {}


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
    # Without the REST key Parse says 403 "unauthorized"; with it but no session, the
    # requiresAuthentication CLP answers 404 {"code": 101, "error": "Permission denied"}.
    refusals = {(403, None, "unauthorized"), (404, 101, "Permission denied")}
    for headers in (app_only, rest_key):
        for method, body in (("GET", None), ("POST", {"batchId": unique})):
            response = _request(settings, method, headers, body)
            answer = (response.status_code, response.json().get("code"), response.json().get("error"))
            assert answer in refusals, (method, answer)
    no_app = httpx.get(f"{settings.parse_url}/classes/BatchMemoryRequest")
    assert no_app.status_code == 403
    master = {**app_only, "X-Parse-Master-Key": settings.parse_master_key}
    found = httpx.get(
        f"{settings.parse_url}/classes/BatchMemoryRequest",
        params={"where": f'{{"batchId": "{unique}"}}'},
        headers=master,
    ).json()["results"]
    assert found == [], "a refused create must not have created anything"
