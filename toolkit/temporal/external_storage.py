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
``toolkit.temporal.client.connect`` can retrieve claims, whatever the settings, so a worker started with
the driver off still runs workflows started by a client with the driver on. The setting
``TEMPORAL_EXTERNAL_STORAGE`` decides only whether *this* process stores large payloads.

It is a safety net, not a replacement for the explicit reference of the new path: the payload still
travels from the client to Parse and from Parse to every worker that decodes it (again on every replay
after a cache eviction), and the legacy workflow still fans the memories out into per-activity inputs
that land in the history. See the README section "Temporal external storage".

:func:`toolkit.temporal.payload_cleanup.cleanup_stored_payloads` removes files that no retained workflow
can still need.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import logging
import re
import weakref
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from temporalio.api.common.v1 import Payload
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

from toolkit.parse import ParseClient
from toolkit.parse.errors import DuplicateValue, ObjectNotFound, ParseError
from toolkit.parse.models import to_parse_date
from toolkit.parse.schema import TEMPORAL_PAYLOAD
from toolkit.settings import Settings

__all__ = [
    "DRIVER_NAME",
    "MalformedClaim",
    "ParseFilesStorageDriver",
    "PayloadIntegrityError",
    "PayloadMissing",
    "StoredPayloadError",
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
