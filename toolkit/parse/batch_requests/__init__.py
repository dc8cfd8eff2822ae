"""Storage of batches in Parse: the ``BatchMemoryRequest`` object and its batch files (design §4.2).

The API stores a batch here and hands the workflow only the objectId (the claim check); the worker
fetches it back, reports progress and errors on it, and finishes it. Every write uses the master key
(this code runs server side) and sets the ACL explicitly (:func:`toolkit.parse.acl.batch_acl`), because
an object created with the master key and no ACL is public. Reads use the master key unless a
session token is given; then Parse's ACL, CLP and protectedFields decide what the caller sees.

Error contract for the worker:

- :class:`BatchFileError` (not retryable): the request's file is missing, corrupt or over the
  decompression limit. Retrying cannot fix it.
- :class:`~toolkit.parse.errors.ParseUnavailable` (retryable): Parse could not be reached or answered
  5xx, whether for the object or for the file download.

``requestId`` mirrors ``batchId``: the workflow carries the objectId, and the schema keeps ``requestId``
for the original service's tooling, which looks a request up by the id the API returned.

One batch passes through these modules in order:

- :mod:`._requests`: the request is created (one gzip file, or none on the legacy path), read back by
  the worker, updated and finished, and deleted with its files; :class:`Submission` carries who
  submitted it and how to answer them;
- :mod:`._chunks`: a batch bigger than one chunk is written as chunk files while its body arrives,
  then its request is created; the worker reads one chunk at a time;
- :mod:`._progress`: the counters, moved only forward while the batch runs;
- :mod:`._error_log`: one ``BatchMemoryError`` per failed memory, counted exactly;
- :mod:`._files`: file names, URLs and safe deletes, shared by the others.

Import from this package, not from its private modules.
"""

from toolkit.parse.batch_requests._chunks import (
    CHUNK_HEADER_BYTES,
    ChunkAccount,
    ChunkedBatchWriter,
    ChunkFill,
    ChunkToProcess,
    ChunkUploads,
    StoredChunk,
    account_failed_chunk,
    chunk_memories,
    chunk_of,
    create_chunked_batch_memory_request,
    download_chunk,
    fits_one_chunk,
    indexes_in_range,
    max_memory_bytes,
)
from toolkit.parse.batch_requests._error_log import (
    MAX_ERROR_CHARS,
    MAX_STORED_ERRORS,
    append_batch_request_errors,
    find_batch_errors,
)
from toolkit.parse.batch_requests._files import (
    BATCH_FILE_CONTENT_TYPE,
    BatchFileError,
    batch_id_of_file,
    delete_file_if_present,
)
from toolkit.parse.batch_requests._progress import (
    advance_batch_request_progress,
    advance_chunk_progress,
    set_batch_request_progress,
    update_batch_request_progress,
)
from toolkit.parse.batch_requests._requests import (
    Submission,
    create_batch_memory_request_in_parse,
    delete_batch_file,
    delete_batch_request,
    fetch_batch_memory_request_from_parse,
    find_batch_request,
    find_by_idempotency_key,
    find_request_holding,
    mark_webhook_sent,
    record_workflow,
    release_slot,
    retire_unstarted_request,
    update_batch_request_completion,
    update_batch_request_status,
)

__all__ = [
    "BATCH_FILE_CONTENT_TYPE",
    "CHUNK_HEADER_BYTES",
    "MAX_ERROR_CHARS",
    "MAX_STORED_ERRORS",
    "BatchFileError",
    "ChunkAccount",
    "ChunkFill",
    "ChunkToProcess",
    "ChunkUploads",
    "ChunkedBatchWriter",
    "StoredChunk",
    "Submission",
    "account_failed_chunk",
    "advance_batch_request_progress",
    "advance_chunk_progress",
    "append_batch_request_errors",
    "batch_id_of_file",
    "chunk_memories",
    "chunk_of",
    "create_batch_memory_request_in_parse",
    "create_chunked_batch_memory_request",
    "delete_batch_file",
    "delete_batch_request",
    "delete_file_if_present",
    "download_chunk",
    "fits_one_chunk",
    "fetch_batch_memory_request_from_parse",
    "find_batch_errors",
    "find_batch_request",
    "find_by_idempotency_key",
    "find_request_holding",
    "indexes_in_range",
    "mark_webhook_sent",
    "max_memory_bytes",
    "record_workflow",
    "release_slot",
    "retire_unstarted_request",
    "set_batch_request_progress",
    "update_batch_request_completion",
    "update_batch_request_progress",
    "update_batch_request_status",
]
