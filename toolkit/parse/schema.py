"""``toolkit migrate``: the Parse classes, indexes, permissions and Config flags of design §4.2.

Idempotent: it reads the live schema and sends only what differs, so a second run changes nothing
(and reports nothing). Index names carry the class name because on PostgreSQL they are global.

Who may do what, on every class the toolkit owns: create, update and delete need the master key (the
API and the worker write; a client holding the public app id and REST key and a session token must
not); a signed-in user may find, get and count, and the object's ACL (owner read, org role read) then
decides which rows they see. A deployment migrated from the earlier, open permissions keeps the
owner's write bit in the ACL of its old rows: harmless, because Parse checks the class-level
permission first and refuses every client write whatever a row's ACL says.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from toolkit.parse._client import ParseClient
from toolkit.parse.errors import ObjectNotFound, ParseError
from toolkit.settings import Settings

AUTHENTICATED = {"requiresAuthentication": True}


def _pointer(target: str) -> dict[str, str]:
    return {"type": "Pointer", "targetClass": target}


# A class-level permission granted to nobody: only the master key (which bypasses CLPs) may.
MASTER_KEY: dict[str, Any] = {}


def _private_class_permissions(protected: list[str]) -> dict[str, Any]:
    """Signed-in users read (their ACL decides which rows); only the master key writes."""
    return {
        "find": AUTHENTICATED,
        "get": AUTHENTICATED,
        "count": AUTHENTICATED,
        "create": MASTER_KEY,
        "update": MASTER_KEY,
        "delete": MASTER_KEY,
        "addField": MASTER_KEY,
        # Both entries: a signed-in user matches "*" and "authenticated", and Parse protects the
        # intersection of the lists that apply.
        "protectedFields": {"*": protected, "authenticated": protected},
    }


BATCH_MEMORY_REQUEST = "BatchMemoryRequest"
BATCH_MEMORY_ERROR = "BatchMemoryError"
MEMORY = "Memory"
TEMPORAL_PAYLOAD = "TemporalPayload"
BATCH_SLOT = "BatchSlot"
BATCH_SLOT_HOLD = "BatchSlotHold"

# No client may find, read or change these rows; only the master key (which bypasses CLPs) can.
MASTER_KEY_ONLY: dict[str, Any] = {
    "find": MASTER_KEY,
    "get": MASTER_KEY,
    "count": MASTER_KEY,
    "create": MASTER_KEY,
    "update": MASTER_KEY,
    "delete": MASTER_KEY,
    "addField": MASTER_KEY,
    "protectedFields": {"*": []},
}

SCHEMAS: dict[str, dict[str, Any]] = {
    BATCH_MEMORY_REQUEST: {
        "fields": {
            "batchId": {"type": "String"},
            "requestId": {"type": "String"},
            "organization": _pointer("Organization"),
            "namespace": _pointer("Namespace"),
            "user": _pointer("_User"),
            "workspace": _pointer("WorkSpace"),
            "batchDataFile": {"type": "File"},
            "batchMetadata": {"type": "Object"},
            "status": {"type": "String"},
            "totalMemories": {"type": "Number"},
            "processedCount": {"type": "Number"},
            "successCount": {"type": "Number"},
            "failCount": {"type": "Number"},
            "errors": {"type": "Array"},
            "errorCount": {"type": "Number"},
            "workflowId": {"type": "String"},
            "workflowRunId": {"type": "String"},
            "webhookUrl": {"type": "String"},
            "webhookSecret": {"type": "String"},
            "webhookSent": {"type": "Boolean"},
            "startedAt": {"type": "Date"},
            "completedAt": {"type": "Date"},
            "processingDurationMs": {"type": "Number"},
            "idempotencyKey": {"type": "String"},
            "batchChunkFiles": {"type": "Array"},
            "chunkProgress": {"type": "Object"},
            # The in-flight slot this batch holds (toolkit.parse.in_flight): given back when it ends.
            "slotHold": {"type": "String"},
        },
        "indexes": {
            "BatchMemoryRequest_batchId": {"batchId": 1},
            "BatchMemoryRequest_org_namespace": {"organization": 1, "namespace": 1},
            "BatchMemoryRequest_user_status": {"user": 1, "status": 1},
            "BatchMemoryRequest_status_createdAt": {"status": 1, "createdAt": 1},
            "BatchMemoryRequest_user_idempotencyKey": {"user": 1, "idempotencyKey": 1},
            "BatchMemoryRequest_slotHold": {"slotHold": 1},
        },
        "classLevelPermissions": _private_class_permissions(["webhookSecret"]),
    },
    # One object per failed memory (objectId derived from batch and index), ACL like its request.
    BATCH_MEMORY_ERROR: {
        "fields": {
            "batchId": {"type": "String"},
            "request": _pointer(BATCH_MEMORY_REQUEST),
            "user": _pointer("_User"),
            "index": {"type": "Number"},
            "error": {"type": "String"},
            "timestamp": {"type": "Date"},
        },
        "indexes": {
            "BatchMemoryError_batchId_index": {"batchId": 1, "index": 1},
            "BatchMemoryError_request": {"request": 1},
        },
        # Written by the worker (master key) only: a client may read its own, never forge one.
        "classLevelPermissions": _private_class_permissions([]),
    },
    MEMORY: {
        "fields": {
            "content": {"type": "String"},
            "type": {"type": "String"},
            "metadata": {"type": "Object"},
            "batchId": {"type": "String"},
            "index": {"type": "Number"},
            "user": _pointer("_User"),
        },
        "indexes": {"Memory_batchId_index": {"batchId": 1, "index": 1}},
        "classLevelPermissions": _private_class_permissions([]),
    },
    # One row per Temporal payload stored by toolkit.temporal.external_storage (objectId = its sha256).
    # Master key only: the rows name workflows, and the files hold workflow inputs.
    TEMPORAL_PAYLOAD: {
        "fields": {
            "digest": {"type": "String"},
            "file": {"type": "File"},
            "storedBytes": {"type": "Number"},
            "payloadBytes": {"type": "Number"},
            "workflowIds": {"type": "Array"},
            "lastUsedAt": {"type": "Date"},
        },
        "indexes": {"TemporalPayload_lastUsedAt": {"lastUsedAt": 1}},
        "classLevelPermissions": MASTER_KEY_ONLY,
    },
    # The in-flight cap (toolkit.parse.in_flight): slot k of a user exists while a batch holds it
    # (objectId "<userId>-<k>", so Parse itself refuses a second holder), and each hold says which
    # batch holds which slot and when its holder last said it is alive. Master key only.
    BATCH_SLOT: {
        "fields": {
            "user": _pointer("_User"),
            "slot": {"type": "Number"},
            "holder": {"type": "String"},
        },
        "indexes": {},
        "classLevelPermissions": MASTER_KEY_ONLY,
    },
    BATCH_SLOT_HOLD: {
        "fields": {
            "user": _pointer("_User"),
            "slot": {"type": "Number"},
            "batchId": {"type": "String"},
            "touchedAt": {"type": "Date"},
        },
        "indexes": {"BatchSlotHold_user": {"user": 1}, "BatchSlotHold_batchId": {"batchId": 1}},
        "classLevelPermissions": MASTER_KEY_ONLY,
    },
}

# Any signed-in user may otherwise create roles, and org roles grant read access to batches.
ROLE_CLASS_PERMISSIONS: dict[str, Any] = {
    "find": {"*": True},
    "get": {"*": True},
    "count": {"*": True},
    "create": {},
    "update": {},
    "delete": {},
    "addField": {},
    "protectedFields": {"*": []},
}


def config_defaults(settings: Settings) -> dict[str, Any]:
    return {
        "USE_PARSE_BATCH_STORAGE": settings.use_parse_batch_storage,
        "PARSE_BATCH_CANARY_PERCENT": settings.parse_batch_canary_percent,
    }


async def _get_schema(client: ParseClient, class_name: str) -> dict[str, Any] | None:
    try:
        return await client.request("GET", f"schemas/{class_name}", master=True)
    except ObjectNotFound:
        return None
    except ParseError as exc:
        if exc.code == 103:  # "class does not exist" on some versions
            return None
        raise


def _clp_differs(live: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return bool(_clp_changes(live, wanted))


def _who(permission: Any) -> str:
    """A class-level permission in words, for the migration's report."""
    if permission == MASTER_KEY:
        return "master key only"
    if permission == AUTHENTICATED:
        return "signed-in users"
    if permission == {"*": True}:
        return "public"
    return json.dumps(permission, sort_keys=True)


def _clp_changes(live: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """What moving the live class-level permissions to ``wanted`` changes, one entry per operation."""
    changes = []
    for operation, value in wanted.items():
        before = live.get(operation)
        if before == value:
            continue
        if operation == "protectedFields":
            changes.append(f"protectedFields {json.dumps(value, sort_keys=True)}")
        else:
            # A missing entry is Parse's default: public.
            changes.append(f"{operation} {_who({'*': True} if before is None else before)} -> {_who(value)}")
    return changes


async def _migrate_class(client: ParseClient, class_name: str, spec: dict[str, Any]) -> list[str]:
    live = await _get_schema(client, class_name)
    if live is None:
        await client.request(
            "POST", f"schemas/{class_name}", json_body={"className": class_name, **spec}, master=True
        )
        return [f"created class {class_name}"]
    changes: list[str] = []
    body: dict[str, Any] = {}
    missing_fields = {k: v for k, v in spec["fields"].items() if k not in live.get("fields", {})}
    if missing_fields:
        body["fields"] = missing_fields
        changes.append(f"{class_name}: added fields {', '.join(sorted(missing_fields))}")
    live_indexes = live.get("indexes") or {}
    missing_indexes = {k: v for k, v in spec["indexes"].items() if k not in live_indexes}
    if missing_indexes:
        body["indexes"] = missing_indexes
        changes.append(f"{class_name}: added indexes {', '.join(sorted(missing_indexes))}")
    clp_changes = _clp_changes(live.get("classLevelPermissions") or {}, spec["classLevelPermissions"])
    if clp_changes:
        body["classLevelPermissions"] = spec["classLevelPermissions"]
        changes.append(f"{class_name}: class-level permissions: {'; '.join(clp_changes)}")
    if body:
        await client.request(
            "PUT", f"schemas/{class_name}", json_body={"className": class_name, **body}, master=True
        )
    return changes


async def _migrate_role_permissions(client: ParseClient) -> list[str]:
    live = await _get_schema(client, "_Role")
    if live is not None and not _clp_differs(live.get("classLevelPermissions") or {}, ROLE_CLASS_PERMISSIONS):
        return []
    await client.request(
        "PUT" if live is not None else "POST",
        "schemas/_Role",
        json_body={"className": "_Role", "classLevelPermissions": ROLE_CLASS_PERMISSIONS},
        master=True,
    )
    return ["_Role: creation locked to the master key"]


async def _migrate_config(client: ParseClient, defaults: dict[str, Any]) -> list[str]:
    """Add missing rollout flags, master-key-only. Existing live values are never overwritten."""
    live = await client.request("GET", "config", master=True)
    params = live.get("params", {})
    master_only = live.get("masterKeyOnly", {})
    missing = {k: v for k, v in defaults.items() if k not in params}
    unprotected = [k for k in defaults if not master_only.get(k)]
    if not missing and not unprotected:
        return []
    # Every PUT must resend masterKeyOnly for the keys it touches, or they become public.
    await client.request(
        "PUT",
        "config",
        json_body={
            "params": {**{k: params[k] for k in unprotected if k in params}, **missing},
            "masterKeyOnly": {k: True for k in defaults},
        },
        master=True,
    )
    changes = [f"config: added {k}={v}" for k, v in missing.items()]
    if set(unprotected) - set(missing):
        changes.append("config: rollout flags made master-key-only")
    return changes


async def migrate(client: ParseClient, settings: Settings) -> list[str]:
    """Bring the schema and Config up to date; return what changed (empty when nothing did)."""
    changes: list[str] = []
    for class_name, spec in SCHEMAS.items():
        changes += await _migrate_class(client, class_name, spec)
    changes += await _migrate_role_permissions(client)
    changes += await _migrate_config(client, config_defaults(settings))
    return changes


def migrate_sync(settings: Settings) -> list[str]:
    async def run() -> list[str]:
        async with ParseClient(settings) as client:
            return await migrate(client, settings)

    return asyncio.run(run())
