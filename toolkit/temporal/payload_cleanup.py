"""Deleting Temporal payloads kept in Parse Files that no retained workflow can still need.

The files are written by :class:`toolkit.temporal.external_storage.ParseFilesStorageDriver`; this module
decides when one may go (``toolkit payloads cleanup``). See :func:`cleanup_stored_payloads` for the rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from toolkit.parse import ParseClient
from toolkit.parse.errors import ObjectNotFound, ParseError
from toolkit.parse.models import to_parse_date
from toolkit.parse.schema import TEMPORAL_PAYLOAD

__all__ = ["DEFAULT_MIN_AGE", "PayloadCleanupReport", "cleanup_stored_payloads", "namespace_retention"]

log = logging.getLogger(__name__)

# A stored payload is never deleted while this young, whatever else holds: between a client's store
# and the server accepting its start, the workflow does not exist yet and looks "gone".
DEFAULT_MIN_AGE = timedelta(hours=1)
_PAGE = 100


@dataclass
class PayloadCleanupReport:
    """What :func:`cleanup_stored_payloads` deleted (or, with ``dry_run``, would delete)."""

    retention: timedelta
    min_age: timedelta
    dry_run: bool
    examined: int = 0  # rows last used before the cutoff
    deleted: list[str] = field(default_factory=list)  # digests
    kept_in_use: list[str] = field(default_factory=list)  # a referencing workflow is open or retained
    errors: list[str] = field(default_factory=list)


async def namespace_retention(temporal: Client) -> timedelta:
    """The namespace's workflow execution retention: how long a closed workflow's history is kept."""
    response = await temporal.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=temporal.namespace)
    )
    return response.config.workflow_execution_retention_ttl.ToTimedelta()


async def _workflow_holds(temporal: Client, workflow_id: str, retained_after: datetime) -> bool:
    """True if the workflow's history may still be replayed, reset or read: open, or closed recently."""
    try:
        description = await temporal.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False  # never started, or its history is gone
        raise
    if description.status in (None, WorkflowExecutionStatus.RUNNING) or description.close_time is None:
        return True
    return description.close_time >= retained_after


async def _candidates(parse: ParseClient, cutoff: datetime) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    where = {"lastUsedAt": {"$lt": to_parse_date(cutoff)}}
    while True:
        page = await parse.find(
            TEMPORAL_PAYLOAD,
            where,
            limit=_PAGE,
            skip=len(rows),
            order="lastUsedAt,objectId",
            keys="file,workflowIds,lastUsedAt",
            master=True,
        )
        rows.extend(page)
        if len(page) < _PAGE:
            return rows


async def cleanup_stored_payloads(
    temporal: Client,
    parse: ParseClient,
    *,
    retention: timedelta | None = None,
    min_age: timedelta = DEFAULT_MIN_AGE,
    dry_run: bool = False,
) -> PayloadCleanupReport:
    """Delete stored payloads that no retained workflow can still need.

    A payload (row and file) goes when **all** hold:

    1. it was last stored more than ``max(retention, min_age)`` ago (``retention`` defaults to the
       namespace's retention), so no client is between storing it and starting its workflow;
    2. every workflow that stored it is gone or closed more than ``retention`` ago. An open workflow may
       replay its history at any time (a new worker, a cache eviction) and a closed one can be reset or
       read until the server drops its history, so either keeps the file. A row with no workflow
       (a standalone activity's payload) is judged by age alone.

    The row is re-read just before deleting and deleted before its file, so a store that reuses it
    meanwhile either sees it gone (and uploads again) or moves ``lastUsedAt`` (and the row is kept).
    A workflow lookup that fails for another reason than "not found" keeps the row and is reported.
    """
    if retention is None:
        retention = await namespace_retention(temporal)
    if retention < timedelta(0) or min_age < timedelta(0):
        raise ValueError("retention and min_age must be >= 0")
    report = PayloadCleanupReport(retention=retention, min_age=min_age, dry_run=dry_run)
    now = datetime.now(UTC)
    cutoff = now - max(retention, min_age)
    retained_after = now - retention
    holds: dict[str, bool] = {}
    for row in await _candidates(parse, cutoff):
        digest = str(row["objectId"])
        report.examined += 1
        try:
            in_use = False
            for workflow_id in row.get("workflowIds") or []:
                if workflow_id not in holds:
                    holds[workflow_id] = await _workflow_holds(temporal, workflow_id, retained_after)
                if holds[workflow_id]:
                    in_use = True
                    break
        except RPCError as exc:
            report.errors.append(f"payload {digest}: workflow lookup failed: {exc}")
            continue
        if in_use:
            report.kept_in_use.append(digest)
            continue
        if not dry_run and not await _delete_payload(parse, digest, cutoff, report):
            continue
        report.deleted.append(digest)
    log.info(
        "payload cleanup: %s %d of %d old payloads, kept %d in use (%d errors)",
        "would delete" if dry_run else "deleted",
        len(report.deleted),
        report.examined,
        len(report.kept_in_use),
        len(report.errors),
    )
    return report


async def _delete_payload(
    parse: ParseClient, digest: str, cutoff: datetime, report: PayloadCleanupReport
) -> bool:
    try:
        row = await parse.get_object(TEMPORAL_PAYLOAD, digest, master=True)
        if row["lastUsedAt"]["iso"] >= to_parse_date(cutoff)["iso"]:
            return False  # stored again since it was listed: in use
        await parse.delete_object(TEMPORAL_PAYLOAD, digest, master=True)
        name = row["file"]["name"]
        try:
            await parse.delete_file(name)
        except ObjectNotFound:
            pass
    except ObjectNotFound:
        return False  # deleted by a concurrent cleanup
    except ParseError as exc:
        report.errors.append(f"payload {digest}: {exc}")
        return False
    return True
