"""Temporal external storage on Parse Files: :class:`ParseFilesStorageDriver` (temporalio 1.35, experimental).

With the driver on, the Temporal SDK hands every payload of at least
``TEMPORAL_EXTERNAL_STORAGE_THRESHOLD`` bytes (a workflow input, an activity input or result, ...) to
:meth:`ParseFilesStorageDriver.store` and writes only a small claim into the workflow history. The
process that later needs the payload (a worker replaying the workflow, a client reading the result)
hands the claim to :meth:`ParseFilesStorageDriver.retrieve` and gets the payload back.

How a payload is kept:

- **Content-addressed.** The payload's serialized protobuf bytes are hashed with sha256; the Parse File
  is named ``tpayload-<sha256>.gz`` (Parse prefixes a random id) and holds those bytes gzip-compressed.
  One ``TemporalPayload`` row per digest (objectId = the digest, master key only) records the file, the
  sizes, the workflows that stored it and when it was last stored.
- **Stored once.** A payload whose row already exists is not uploaded again: the row is touched
  (``lastUsedAt``, the workflow id added) and its file reused. Two processes storing the same new payload
  at once both upload; the second row create is refused (Parse 137) and the loser deletes its upload.
- **Verified.** A retrieved file is inflated (with the decompression limit of the settings) and hashed;
  a digest that differs from the claim's, a malformed claim, a corrupt file or a missing file raise a
  non-retryable :class:`StoredPayloadError`: the workflow fails at once with a clear message instead of
  retrying a task that can never succeed. Parse being unreachable stays retryable.

The rule for clients and workers (see :func:`external_storage`): **every** client built by
``toolkit.temporal_client.connect`` can retrieve claims, whatever the settings, so a worker started with
the driver off still runs workflows started by a client with the driver on. The setting
``TEMPORAL_EXTERNAL_STORAGE`` decides only whether *this* process stores large payloads.

It is a safety net, not a replacement for the explicit reference of the new path: the payload still
travels from the client to Parse and from Parse to every worker that decodes it (again on every replay
after a cache eviction), and the legacy workflow still fans the memories out into per-activity inputs
that land in the history. See the README section "Temporal external storage".

:func:`cleanup_stored_payloads` removes files that no retained workflow can still need.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import logging
import re
import time
import weakref
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.converter import (
    DataConverter,
    ExternalStorage,
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverSelectContext,
    StorageDriverStoreContext,
    StorageDriverWorkflowInfo,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from toolkit.parse._client import ParseClient
from toolkit.parse.errors import DuplicateValue, ObjectNotFound, ParseError
from toolkit.parse.models import to_parse_date
from toolkit.parse.schema import TEMPORAL_PAYLOAD
from toolkit.settings import Settings

__all__ = [
    "DEFAULT_MIN_AGE",
    "DRIVER_NAME",
    "MalformedClaim",
    "ParseFilesStorageDriver",
    "PayloadCleanupReport",
    "PayloadIntegrityError",
    "PayloadMissing",
    "StoredPayloadError",
    "cleanup_stored_payloads",
    "data_converter",
    "external_storage",
    "file_name_for",
]

log = logging.getLogger(__name__)

# The name written into every claim. Changing it orphans every claim already in a history.
DRIVER_NAME = "parse-files"
_FILE_PREFIX = "tpayload-"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# Parse's own file-name alphabet; anything else in a claim is refused before it becomes a URL path.
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9@.~_-]{0,254}$")
# A stored payload is never deleted while this young, whatever else holds: between a client's store
# and the server accepting its start, the workflow does not exist yet and looks "gone".
DEFAULT_MIN_AGE = timedelta(hours=1)
_PAGE = 100


# ---- errors -----------------------------------------------------------------------------------------


class StoredPayloadError(ApplicationError):
    """A claim that can never be resolved. Non-retryable: a workflow task that hits it fails the workflow.

    Messages name the digest and the file, never the payload's content.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, type=type(self).__name__, non_retryable=True)


class MalformedClaim(StoredPayloadError):
    """The claim lacks a field or holds a value this driver would never write."""


class PayloadMissing(StoredPayloadError):
    """The claim's file is gone from Parse (deleted too early, or another Parse Server)."""


class PayloadIntegrityError(StoredPayloadError):
    """The file does not hold the payload the claim names: digest mismatch, corrupt or oversized gzip."""


# ---- the driver -------------------------------------------------------------------------------------


def file_name_for(digest: str) -> str:
    """The name a payload with this sha256 is uploaded under (Parse prefixes a random id)."""
    return f"{_FILE_PREFIX}{digest}.gz"


def _serialize(payload: Payload) -> bytes:
    # Deterministic, so the same payload always gives the same digest and is stored once.
    return payload.SerializeToString(deterministic=True)


def _compress(raw: bytes, level: int) -> bytes:
    # mtime=0: the same bytes always compress to the same file.
    return gzip.compress(raw, compresslevel=level, mtime=0)


def _inflate(data: bytes, limit: int, digest: str) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise PayloadIntegrityError(f"stored payload {digest} is not a valid gzip file: {exc}") from None
    if len(raw) > limit:
        raise PayloadIntegrityError(
            f"stored payload {digest} inflates past the limit of {limit:,} bytes; refused"
        )
    if not inflater.eof or inflater.unused_data:
        raise PayloadIntegrityError(f"stored payload {digest} is truncated or has trailing bytes")
    return raw


@dataclass(frozen=True)
class _Claim:
    digest: str
    name: str

    @classmethod
    def parse(cls, claim: StorageDriverClaim) -> _Claim:
        data = claim.claim_data
        digest, name = data.get("digest", ""), data.get("name", "")
        if not _DIGEST.match(digest):
            raise MalformedClaim(f"claim of driver {DRIVER_NAME!r} has no valid sha256 digest")
        if not _FILE_NAME.match(name) or not name.endswith(file_name_for(digest)):
            raise MalformedClaim(f"claim for payload {digest} names an invalid file")
        return cls(digest, name)


def _workflow_id(context: StorageDriverStoreContext) -> str | None:
    # Payloads of a workflow's activities are stored for that workflow too (the SDK's own choice), so the
    # workflow id is what decides how long a file may be needed. Standalone activities have none.
    target = context.target
    return target.id if isinstance(target, StorageDriverWorkflowInfo) and target.id else None


class ParseFilesStorageDriver(StorageDriver):
    """Stores Temporal payloads as Parse Files with the master key. See the module docstring.

    One Parse connection pool per event loop, made on first use: an httpx pool must not cross loops,
    and making one per call costs more than a small store (its TLS context alone: 0.2-0.4 s measured
    on a loaded 2-core machine).
    """

    def __init__(self, settings: Settings, *, name: str = DRIVER_NAME) -> None:
        self._settings = settings
        self._name = name
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ParseClient] = (
            weakref.WeakKeyDictionary()
        )

    def name(self) -> str:
        return self._name

    def type(self) -> str:
        return "parse-files"

    def _parse(self) -> ParseClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = ParseClient(self._settings)
        return client

    async def aclose(self) -> None:
        """Close this loop's connection pool (optional: a process that exits needs not)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    # -- store --------------------------------------------------------------------------------------
    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        workflow_id = _workflow_id(context)
        parse = self._parse()
        names = await asyncio.gather(*(self._store_one(parse, p, workflow_id) for p in payloads))
        return [StorageDriverClaim(claim_data={"digest": d, "name": n}) for d, n in names]

    async def _store_one(
        self, parse: ParseClient, payload: Payload, workflow_id: str | None
    ) -> tuple[str, str]:
        raw = _serialize(payload)
        digest = hashlib.sha256(raw).hexdigest()
        existing = await self._reuse(parse, digest, workflow_id)
        if existing is not None:
            return digest, existing
        data = await asyncio.to_thread(_compress, raw, self._settings.gzip_level)
        uploaded = await parse.upload_file(file_name_for(digest), data, "application/gzip", master=True)
        name = str(uploaded["name"])
        row = {
            "objectId": digest,
            "digest": digest,
            "file": {"__type": "File", "name": name},
            "storedBytes": len(data),
            "payloadBytes": len(raw),
            "workflowIds": [workflow_id] if workflow_id else [],
            "lastUsedAt": to_parse_date(datetime.now(UTC)),
            "ACL": {},  # nobody but the master key
        }
        try:
            # Any other failure leaves the upload unreferenced: `toolkit cleanup`'s orphan sweep takes it.
            await parse.create_object(TEMPORAL_PAYLOAD, row, master=True)
        except DuplicateValue:
            # Someone stored the same payload meanwhile: keep theirs, drop ours.
            await _delete_file_quietly(parse, name)
            existing = await self._reuse(parse, digest, workflow_id)
            if existing is None:  # theirs was cleaned up in between: cannot happen within DEFAULT_MIN_AGE
                raise
            return digest, existing
        log.debug("stored payload %s (%d bytes, %d gzip) as %s", digest, len(raw), len(data), name)
        return digest, name

    async def _reuse(self, parse: ParseClient, digest: str, workflow_id: str | None) -> str | None:
        """The file name of an already stored payload, after marking it used now; None if not stored."""
        try:
            row = await parse.get_object(TEMPORAL_PAYLOAD, digest, master=True)
            touch: dict[str, Any] = {"lastUsedAt": to_parse_date(datetime.now(UTC))}
            if workflow_id:
                touch["workflowIds"] = {"__op": "AddUnique", "objects": [workflow_id]}
            # Touched before the claim is handed out, so cleanup sees it as recently used.
            await parse.update_object(TEMPORAL_PAYLOAD, digest, touch, master=True)
        except ObjectNotFound:
            return None
        return str(row["file"]["name"])

    # -- retrieve -----------------------------------------------------------------------------------
    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        parsed = [_Claim.parse(c) for c in claims]
        parse = self._parse()
        return list(await asyncio.gather(*(self._retrieve_one(parse, c) for c in parsed)))

    async def _retrieve_one(self, parse: ParseClient, claim: _Claim) -> Payload:
        url = f"{parse.base_url}/files/{self._settings.parse_app_id}/{claim.name}"
        try:
            data = await parse.download(url)
        except ObjectNotFound:
            raise PayloadMissing(
                f"stored payload {claim.digest} (file {claim.name}) is gone from Parse"
            ) from None
        raw = await asyncio.to_thread(_inflate, data, self._settings.max_decompressed_bytes, claim.digest)
        actual = hashlib.sha256(raw).hexdigest()
        if actual != claim.digest:
            raise PayloadIntegrityError(
                f"stored payload {claim.digest} (file {claim.name}) fails verification: its content hashes "
                f"to {actual}"
            )
        payload = Payload()
        payload.ParseFromString(raw)
        return payload


async def _delete_file_quietly(parse: ParseClient, name: str) -> None:
    try:
        await parse.delete_file(name)
    except ParseError as exc:
        # Left behind, it is an orphan: `toolkit cleanup` removes unreferenced files on a local stack.
        log.warning("could not delete duplicate payload upload %s: %s", name, exc)


# ---- wiring -----------------------------------------------------------------------------------------


def external_storage(settings: Settings) -> ExternalStorage:
    """The SDK's external storage for this process: always able to retrieve, storing only if switched on.

    Retrieval must never depend on the setting: a claim written by one process (a client with the
    driver on) is read by others (every worker that replays that workflow).
    """
    if settings.temporal_external_storage_threshold < 0:
        raise ValueError(
            f"TEMPORAL_EXTERNAL_STORAGE_THRESHOLD must be >= 0 bytes, got "
            f"{settings.temporal_external_storage_threshold}"
        )
    driver = ParseFilesStorageDriver(settings)
    storing = settings.temporal_external_storage

    def select(_context: StorageDriverSelectContext, _payload: Payload) -> StorageDriver | None:
        # Called only for payloads at or over the threshold; None keeps the payload inline.
        return driver if storing else None

    return ExternalStorage(
        drivers=[driver],
        driver_selector=select,
        payload_size_threshold=settings.temporal_external_storage_threshold,
    )


def data_converter(settings: Settings) -> DataConverter:
    """The default converter with :func:`external_storage` attached (used by ``connect``)."""
    return dataclasses.replace(DataConverter.default, external_storage=external_storage(settings))


# ---- cleanup ----------------------------------------------------------------------------------------


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


# ---- measurements -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundTripFigures:
    """One payload through the driver: times of a first store, a repeated store and a retrieve."""

    payload_bytes: int
    stored_bytes: int  # gzip size of the file in Parse
    store_s: float
    store_again_s: float  # already stored: no upload
    retrieve_s: float  # download, inflate, verify


async def time_round_trip(settings: Settings, payload: Payload) -> RoundTripFigures:
    """Store ``payload`` twice and retrieve it once through a :class:`ParseFilesStorageDriver`; time each."""
    driver = ParseFilesStorageDriver(settings)
    context = StorageDriverStoreContext()
    await driver._parse().health()  # the pool exists and is connected before anything is timed
    started = time.perf_counter()
    [claim] = await driver.store(context, [payload])
    store_s = time.perf_counter() - started
    started = time.perf_counter()
    await driver.store(context, [payload])
    store_again_s = time.perf_counter() - started
    started = time.perf_counter()
    [back] = await driver.retrieve(StorageDriverRetrieveContext(), [claim])
    retrieve_s = time.perf_counter() - started
    try:
        if back != payload:
            raise PayloadIntegrityError(f"payload {claim.claim_data['digest']} came back different")
        row = await driver._parse().get_object(TEMPORAL_PAYLOAD, claim.claim_data["digest"], master=True)
    finally:
        await driver.aclose()
    return RoundTripFigures(payload.ByteSize(), int(row["storedBytes"]), store_s, store_again_s, retrieve_s)


@dataclass(frozen=True)
class DriverRunFigures:
    """One legacy batch started through a driver-enabled client (a ``toolkit.metrics``-style row)."""

    workload: str
    memories: int
    threshold: int  # payloads of at least this many bytes went to Parse Files
    workflow_id: str
    batch_id: str
    status: str  # the batch's final status (BatchSummary.status)
    input_bytes: int  # workflow input as it sits in the history (the claim when it was stored)
    externally_stored_bytes: int  # bytes the claim stands for (0: the input stayed inline)
    history_bytes: int
    history_events: int
    seconds: float  # submit to result


async def measure_legacy_with_driver(
    settings: Settings,
    memories: int,
    *,
    workload: str = "chitchat",
    threshold: int | None = None,
    timeout: timedelta = timedelta(minutes=10),
) -> DriverRunFigures:
    """Run the legacy path for ``memories`` memories with the driver on; return its payload figures.

    The third column of the payload notebook ("transparent" claim check): the same batch as the
    reference and legacy columns, started by a client that stores payloads of at least ``threshold``
    bytes (default: the settings' ``TEMPORAL_EXTERNAL_STORAGE_THRESHOLD``) in Parse Files. It runs on the
    stack's worker(s) on ``settings.temporal_task_queue``; they read the claim whatever their own switch.

    Only the workflow input is a large payload: the per-memory activity inputs the legacy workflow
    builds stay far below any sensible threshold, so they are still written to the history inline.
    A new Parse user owns the batch. Raises ``TimeoutError`` if the batch does not finish in ``timeout``.
    """
    # Imported here: the starter pulls in the workflow definitions, which this module does not need.
    from toolkit.history import measure_history
    from toolkit.starter import store_and_start
    from toolkit.temporal_client import connect
    from toolkit.users import sign_up
    from toolkit.workloads import make_memories

    storing = dataclasses.replace(
        settings,
        temporal_external_storage=True,
        temporal_external_storage_threshold=(
            settings.temporal_external_storage_threshold if threshold is None else threshold
        ),
    )
    temporal = await connect(storing)
    batch = make_memories(workload, memories)
    async with ParseClient(settings) as parse:
        user = await sign_up(parse)
        started = time.perf_counter()
        submitted = await store_and_start(temporal, parse, storing, user, batch, legacy=True)
        try:
            summary = await asyncio.wait_for(submitted.result(), timeout.total_seconds())
        except TimeoutError:
            # Never leave a legacy run behind: the runbook's cleanup check counts running ones.
            await submitted.handle.terminate(reason=f"measurement gave up after {timeout}")
            raise
        seconds = time.perf_counter() - started
    figures = await measure_history(submitted.handle)
    history = await submitted.handle.fetch_history()
    started_event = history.events[0].workflow_execution_started_event_attributes
    external = sum(e.size_bytes for p in started_event.input.payloads for e in p.external_payloads)
    return DriverRunFigures(
        workload=workload,
        memories=memories,
        threshold=storing.temporal_external_storage_threshold,
        workflow_id=submitted.handle.id,
        batch_id=submitted.batch_id,
        status=summary.status,
        input_bytes=figures.input_bytes,
        externally_stored_bytes=external,
        history_bytes=figures.history_bytes,
        history_events=figures.history_events,
        seconds=seconds,
    )
