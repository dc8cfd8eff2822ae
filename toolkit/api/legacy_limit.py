"""The legacy path's size limit: its workflow input carries the whole batch, Temporal caps payloads.

Temporal refuses any payload over 2 MiB (``limit.blobSize.error``, verified: 2,097,152 bytes pass,
one more fails). The legacy workflow input is ``LegacyBatchInput(context, memories)``, so a batch the
API otherwise accepts (up to 10,000 memories of 15,000 bytes) can be refused by Temporal, which
used to surface as a 502 after the batch was stored. The API now estimates the input before storing
anything and answers 413 instead; the reference path, whose input is ~70 bytes, has no such limit.

The estimate serializes each memory as Temporal's default JSON converter does (compact, and
``ensure_ascii``: "é" becomes the 6 bytes ``\\u00e9``, so non-Latin text counts up to 3-6 times its
UTF-8 size) and adds a margin for the context and the list framing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from toolkit.parse.models import MemoryItem

TEMPORAL_PAYLOAD_LIMIT_BYTES = 2 * 1024 * 1024
# Refuse below Temporal's limit, not at it: the payload also carries its encoding metadata, and the
# margin absorbs any drift between this estimate and the SDK's serialization.
LEGACY_MAX_INPUT_BYTES = TEMPORAL_PAYLOAD_LIMIT_BYTES - 64 * 1024
# The batch context (request, batch, user, organization, namespace and workspace ids: at most
# six 64-character ids plus their keys) and the ``{"context":…,"memories":[…]}`` framing.
LEGACY_CONTEXT_MARGIN_BYTES = 1024


class LegacyInputTooLarge(Exception):
    """The batch would not fit into a legacy workflow input."""

    def __init__(self, estimated_bytes: int, counted: int, total: int) -> None:
        more = "" if counted == total else f" (counting {counted:,} of its {total:,} memories)"
        super().__init__(
            f"this batch takes the legacy path, which carries the whole batch in the Temporal workflow "
            f"input: at least {estimated_bytes:,} bytes{more}; the limit is {LEGACY_MAX_INPUT_BYTES:,} "
            f"bytes (Temporal's 2 MiB payload limit minus a 64 KiB margin). Send fewer or smaller "
            f"memories per batch; the reference path has no such limit."
        )
        self.estimated_bytes = estimated_bytes


def legacy_input_bytes(memories: Sequence[MemoryItem], stop_above: int | None = None) -> tuple[int, int]:
    """(estimated input bytes, memories counted). Stops counting once the estimate passes ``stop_above``.

    Memory by memory, so no multi-megabyte string is ever built, and an oversized batch of 10,000
    memories costs only as many as it takes to pass the limit.
    """
    total = LEGACY_CONTEXT_MARGIN_BYTES
    for counted, memory in enumerate(memories, start=1):
        # As the starter sends it (model_dump(mode="json")) and the converter writes it; +1 comma.
        text = json.dumps(memory.model_dump(mode="json"), separators=(",", ":"), allow_nan=False)
        total += len(text) + 1
        if stop_above is not None and total > stop_above:
            return total, counted
    return total, len(memories)


def check_legacy_input_size(memories: Sequence[MemoryItem]) -> None:
    """Raise :class:`LegacyInputTooLarge` if the batch would exceed :data:`LEGACY_MAX_INPUT_BYTES`."""
    estimated, counted = legacy_input_bytes(memories, stop_above=LEGACY_MAX_INPUT_BYTES)
    if estimated > LEGACY_MAX_INPUT_BYTES:
        raise LegacyInputTooLarge(estimated, counted, len(memories))


async def ensure_fits_legacy_input(memories: Sequence[MemoryItem]) -> None:
    """:func:`check_legacy_input_size` off the event loop: a big batch takes tens of milliseconds."""
    await asyncio.to_thread(check_legacy_input_size, memories)
