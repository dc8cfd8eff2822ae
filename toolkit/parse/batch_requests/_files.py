"""The batch files on Parse: their names and URLs, deleting one safely, and reading a one-file batch back."""

from __future__ import annotations

import asyncio
import logging
import re

from pydantic import ValidationError

from toolkit.parse._client import ParseClient
from toolkit.parse.codec import (
    CorruptBatchFile,
    DecompressionLimitExceeded,
    decode_memories,
)
from toolkit.parse.errors import ObjectNotFound, ParseError
from toolkit.parse.models import (
    FINISHED_STATUSES,
    BatchMemoryRequest,
    MemoryItem,
    ParseFile,
)
from toolkit.settings import Settings

log = logging.getLogger(__name__)

BATCH_FILE_CONTENT_TYPE = "application/gzip"


# Parse's error code when a files adapter fails to delete (the fs adapter's ENOENT included).
_FILE_DELETE_ERROR = 153


class BatchFileError(Exception):
    """The request's batch file is missing, corrupt or over the decompression limit: not retryable."""


def first_invalid_field(exc: ValidationError) -> str:
    """``<field path>: <error type>`` of the first invalid field.

    Never the error's text: pydantic quotes the offending input, i.e. memory content, and this message
    ends up in the workflow history.
    """
    first = exc.errors(include_input=False)[0]
    return ".".join(str(part) for part in first["loc"]) + f": {first['type']}"


def batch_file_name(batch_id: str) -> str:
    return f"{batch_id}.json.gz"


def chunk_file_name(batch_id: str, chunk_num: int) -> str:
    return f"{batch_id}.chunk{chunk_num:05d}.ndjson.gz"


# A stored name is the name given (batch_file_name, chunk_file_name) after the random prefix Parse adds
# ("<32 hex digits>_").
_STORED_BATCH_FILE = re.compile(
    r"(?:[0-9a-f]{32}_)?(?P<batch_id>[A-Za-z0-9_-]{1,64})\.(?:chunk\d{5}\.ndjson|json)\.gz"
)


def batch_id_of_file(stored_name: str) -> str | None:
    """The batch id a stored batch or chunk file was uploaded for; None for any other file."""
    match = _STORED_BATCH_FILE.fullmatch(stored_name)
    return match["batch_id"] if match else None


def file_url(client: ParseClient, name: str) -> str:
    return f"{client.base_url}/files/{client.settings.parse_app_id}/{name}"


async def delete_file_if_present(client: ParseClient, file: ParseFile) -> bool:
    """Delete a Parse File; True if it was deleted now, False if it was already gone."""
    try:
        await client.delete_file(file.name)
    except ObjectNotFound:
        return False
    except ParseError as exc:
        if exc.code != _FILE_DELETE_ERROR:
            raise
        # The fs adapter answers 153 (ENOENT) for a missing file, e.g. when a retried DELETE
        # repeats one that worked. Only a download can tell "gone" from a real failure.
        try:
            await client.download(file.url or file_url(client, file.name))
        except ObjectNotFound:
            return False
        raise
    return True


async def discard_upload(client: ParseClient, uploaded: ParseFile, batch_id: str) -> None:
    try:
        await delete_file_if_present(client, uploaded)
    except ParseError as cleanup_error:
        # The original error matters more; `toolkit cleanup` removes what is left on a local stack.
        log.error("batch %s: could not delete uploaded file %s: %s", batch_id, uploaded.name, cleanup_error)


async def download_memories(
    client: ParseClient, settings: Settings, request: BatchMemoryRequest
) -> list[MemoryItem] | None:
    file = request.batch_data_file
    storage = request.batch_metadata.storage if request.batch_metadata else "reference"
    finished = request.status in FINISHED_STATUSES
    if file is None and request.batch_chunk_files:
        # A chunked batch: each chunk activity reads its own file (download_chunk).
        return None
    if file is None:
        # A legacy batch has no file, and a finished one may have had it cleaned up.
        if storage == "legacy" or finished:
            return None
        raise BatchFileError(f"request {request.object_id} (batch {request.batch_id}) has no batch file")
    try:
        data = await client.download(file.url or file_url(client, file.name))
    except ObjectNotFound as exc:
        if finished:
            return None
        raise BatchFileError(
            f"batch file {file.name} of request {request.object_id} is missing: {exc}"
        ) from exc
    try:
        plain = await asyncio.to_thread(decode_memories, data, settings.max_decompressed_bytes)
    except DecompressionLimitExceeded as exc:
        raise BatchFileError(
            f"batch file {file.name} of request {request.object_id} is over the decompression limit "
            f"({settings.max_decompressed_bytes:,} bytes): {exc}"
        ) from exc
    except CorruptBatchFile as exc:
        raise BatchFileError(
            f"batch file {file.name} of request {request.object_id} is corrupt: {exc}"
        ) from exc
    finally:
        del data
    try:
        return [MemoryItem.model_validate(m) for m in plain]
    except ValidationError as exc:
        raise BatchFileError(
            f"batch file {file.name} of request {request.object_id} holds {exc.error_count()} invalid "
            f"memory field(s); first: {first_invalid_field(exc)}"
        ) from None
