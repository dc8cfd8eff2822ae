"""Batches to measure with (design §5): real conversation text, and fixed-size synthetic text.

Every figure the toolkit reports names the workload that produced it, so both generators are
deterministic: the same ``(count, seed)`` gives the same memories on every machine and every run.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

_Row = TypeVar("_Row")

__all__ = ["WORKLOADS", "chatterbot_memories", "chitchat_memories", "make_memories", "synthetic_memories"]

# One message of the Chit Chat dataset: (turn, sender, timestamp, text).
_Message = tuple[int, str, str, str]


@functools.cache
def _conversations() -> tuple[tuple[str, tuple[_Message, ...]], ...]:
    """The dataset as ``(conversation_id, messages)`` pairs sorted by id, read from disk once per process.

    In the dataset a conversation is a list of turns and a turn a list of consecutive messages of one
    sender; messages are flattened here and keep their turn number. Empty messages are dropped.
    """
    import chitchat_dataset  # ~40 MB of JSON: only loaded when a chitchat workload is asked for

    conversations = []
    for conversation_id, conversation in sorted(chitchat_dataset.Dataset().items()):
        messages = tuple(
            (turn, message["sender"], message["timestamp"], message["text"])
            for turn, messages_of_turn in enumerate(conversation["messages"])
            for message in messages_of_turn
            if message["text"].strip()
        )
        if messages:
            conversations.append((conversation_id, messages))
    return tuple(conversations)


def _cycled(rows: Iterable[_Row], count: int) -> Iterator[_Row]:
    """``count`` rows: ``rows`` in order, then again from the start as often as it takes."""
    return itertools.islice(itertools.cycle(rows), count)


def chitchat_memories(count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` real chat messages from the Chit Chat dataset (MIT, ~7,000 conversations), as memories.

    Conversations are taken whole, in an order shuffled by ``seed``, so a batch reads like real
    traffic: consecutive messages of the same people. Each memory is::

        {"content": text, "type": "text",
         "metadata": {"conversation_id", "sender", "timestamp", "turn"}}

    The dataset holds about 258,000 non-empty messages; a larger ``count`` cycles through them
    again in the same order, so memories then repeat (content and metadata alike).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0:
        return []
    conversations = list(_conversations())
    random.Random(seed).shuffle(conversations)
    messages = (
        (conversation_id, *message) for conversation_id, messages in conversations for message in messages
    )
    return [
        {
            "content": text,
            "type": "text",
            "metadata": {
                "conversation_id": conversation_id,
                "sender": sender,
                "timestamp": timestamp,
                "turn": turn,
            },
        }
        for conversation_id, turn, sender, timestamp, text in _cycled(messages, count)
    ]


# Random bytes -> text: about 1 byte in 6 becomes a space, the rest lowercase letters, so the text is
# "words" of ~5 letters whose letters are nearly random: gzip gains little, as with real varied text.
_SPACES = 42
_TO_TEXT = bytes(32 if b < _SPACES else 97 + (b - _SPACES) % 26 for b in range(256))


def synthetic_memories(count: int, *, content_bytes: int = 500, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` memories whose content is exactly ``content_bytes`` UTF-8 bytes, for size sweeps.

    The content is pseudo-random lowercase words (ASCII, so bytes == characters). Memory ``i`` is the
    same whatever ``count`` is: a larger batch extends a smaller one of the same seed.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if content_bytes < 1:
        raise ValueError(f"content_bytes must be >= 1, got {content_bytes}")
    rng = random.Random(seed)
    memories: list[dict[str, Any]] = []
    for index in range(count):
        text = bytearray(rng.randbytes(content_bytes).translate(_TO_TEXT))
        # No leading or trailing space: a memory that looks stripped stays the same size when stripped.
        for end in (0, -1):
            if text[end] == 32:
                text[end] = 120  # "x"
        memories.append(
            {
                "content": text.decode("ascii"),
                "type": "text",
                "metadata": {"index": index, "workload": "synthetic"},
            }
        )
    return memories


@functools.cache
def _chatterbot_lines() -> tuple[tuple[str, str, int, int, str], ...]:
    """Every line of the ChatterBot corpus as ``(language, category, conversation, turn, text)``, sorted.

    The corpus (``chatterbot-corpus`` wheel, BSD-3) is ~1 MB of YAML dialogs in 28 languages, read from
    the installed package's data folder: nothing is downloaded at run time.
    """
    from importlib.resources import files

    import yaml

    lines = []
    data = files("chatterbot_corpus") / "data"
    for language in sorted(d.name for d in data.iterdir() if d.is_dir()):
        for path in sorted((data / language).iterdir(), key=lambda p: p.name):
            if not path.name.endswith((".yml", ".yaml")):
                continue
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for number, conversation in enumerate(document.get("conversations") or []):
                for turn, text in enumerate(conversation or []):
                    if text is not None and str(text).strip():
                        lines.append((language, path.name.rsplit(".", 1)[0], number, turn, str(text)))
    return tuple(lines)


def chatterbot_memories(count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` real dialog lines of the multilingual ChatterBot corpus (28 languages), as memories.

    A third real-text workload beside chitchat: short question/answer lines, much of it in
    non-Latin scripts, so it compresses differently from English chat. Files are taken whole, in an
    order shuffled by ``seed``; a ``count`` above the corpus' ~11,000 lines cycles through it again.
    Each memory is ``{"content", "type": "text", "metadata": {"language", "category", "conversation",
    "turn"}}``.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0:
        return []
    by_file: dict[tuple[str, str], list[tuple[str, str, int, int, str]]] = {}
    for line in _chatterbot_lines():
        by_file.setdefault((line[0], line[1]), []).append(line)
    order = sorted(by_file)
    random.Random(seed).shuffle(order)
    lines = (line for key in order for line in by_file[key])
    return [
        {
            "content": text,
            "type": "text",
            "metadata": {
                "language": language,
                "category": category,
                "conversation": conversation,
                "turn": turn,
            },
        }
        for language, category, conversation, turn, text in _cycled(lines, count)
    ]


WORKLOADS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "chitchat": chitchat_memories,
    "synthetic": synthetic_memories,
    "chatterbot": chatterbot_memories,
}


def make_memories(workload: str, count: int, **kw: Any) -> list[dict[str, Any]]:
    """``count`` memories of the named workload; keyword arguments go to its generator."""
    try:
        generate = WORKLOADS[workload]
    except KeyError:
        raise ValueError(
            f"unknown workload {workload!r}; valid workloads: {', '.join(sorted(WORKLOADS))}"
        ) from None
    return generate(count, **kw)
