"""Workloads: deterministic, the right sizes and shapes, valid as memories."""

from __future__ import annotations

import gzip

import pytest

from toolkit.parse.models import MemoryItem
from toolkit.validation.workloads import (
    WORKLOADS,
    _conversations,
    chatterbot_memories,
    chitchat_memories,
    make_memories,
    synthetic_memories,
)


def test_chitchat_is_deterministic_per_seed() -> None:
    assert chitchat_memories(300) == chitchat_memories(300)
    assert chitchat_memories(300, seed=7) == chitchat_memories(300, seed=7)
    assert chitchat_memories(300, seed=7) != chitchat_memories(300)
    assert chitchat_memories(1000)[:300] == chitchat_memories(300)


def test_chitchat_memory_shape() -> None:
    memories = chitchat_memories(500)

    assert len(memories) == 500
    for memory in memories:
        assert set(memory) == {"content", "type", "metadata"}
        assert memory["type"] == "text"
        assert memory["content"].strip()
        assert set(memory["metadata"]) == {"conversation_id", "sender", "timestamp", "turn"}
        assert isinstance(memory["metadata"]["turn"], int) and memory["metadata"]["turn"] >= 0
        assert memory["metadata"]["timestamp"].endswith("Z")
        MemoryItem.model_validate(memory)


def test_chitchat_keeps_conversations_whole_and_in_order() -> None:
    memories = chitchat_memories(2000, seed=3)
    conversations = [m["metadata"]["conversation_id"] for m in memories]
    # Each conversation appears as one contiguous run...
    runs = [c for i, c in enumerate(conversations) if i == 0 or c != conversations[i - 1]]
    assert len(runs) == len(set(runs)) > 1
    # ...with its turns and timestamps in order.
    for previous, current in zip(memories, memories[1:], strict=False):
        if previous["metadata"]["conversation_id"] == current["metadata"]["conversation_id"]:
            assert previous["metadata"]["turn"] <= current["metadata"]["turn"]
            assert previous["metadata"]["timestamp"] <= current["metadata"]["timestamp"]


def test_chitchat_returns_fresh_objects() -> None:
    first = chitchat_memories(5)
    first[0]["metadata"]["turn"] = -99
    first[1]["content"] = "changed"
    assert chitchat_memories(5)[0]["metadata"]["turn"] != -99
    assert chitchat_memories(5)[1]["content"] != "changed"


def test_chitchat_cycles_past_the_end_of_the_dataset() -> None:
    total = sum(len(messages) for _, messages in _conversations())
    assert total == 258_112  # chitchat-dataset 0.9.0: 258,145 messages, 33 of them empty

    everything = chitchat_memories(total + 100)

    assert len(everything) == total + 100
    assert everything[total:] == everything[:100]


def test_zero_and_negative_counts() -> None:
    assert chitchat_memories(0) == [] and synthetic_memories(0) == []
    with pytest.raises(ValueError):
        chitchat_memories(-1)
    with pytest.raises(ValueError):
        synthetic_memories(-1)


@pytest.mark.parametrize("content_bytes", [1, 2, 17, 500, 15_000])
def test_synthetic_sizes_are_exact(content_bytes: int) -> None:
    memories = synthetic_memories(50, content_bytes=content_bytes)

    assert len(memories) == 50
    assert {len(m["content"].encode("utf-8")) for m in memories} == {content_bytes}
    assert all(m["content"] == m["content"].strip() for m in memories)


def test_synthetic_shape_and_determinism() -> None:
    memories = synthetic_memories(100, seed=1)

    assert memories == synthetic_memories(100, seed=1)
    assert memories != synthetic_memories(100, seed=2)
    assert synthetic_memories(300, seed=1)[:100] == memories
    assert [m["metadata"] for m in memories] == [{"index": i, "workload": "synthetic"} for i in range(100)]
    assert all(m["type"] == "text" for m in memories)
    assert len({m["content"] for m in memories}) == 100
    for memory in memories:
        MemoryItem.model_validate(memory)


def test_synthetic_is_words_gzip_cannot_shrink_much() -> None:
    content = " ".join(m["content"] for m in synthetic_memories(200)).encode()
    words = content.split()

    assert 3 < len(content) / len(words) < 9
    assert all(word.isalpha() and word.islower() for word in words)
    assert len(content) / len(gzip.compress(content)) < 2.5


def test_synthetic_refuses_empty_content() -> None:
    with pytest.raises(ValueError):
        synthetic_memories(1, content_bytes=0)


def test_make_memories() -> None:
    assert set(WORKLOADS) == {"chatterbot", "chitchat", "synthetic"}
    assert make_memories("chitchat", 10) == chitchat_memories(10)
    assert make_memories("chatterbot", 10, seed=2) == chatterbot_memories(10, seed=2)
    assert make_memories("synthetic", 10, content_bytes=64, seed=4) == synthetic_memories(
        10, content_bytes=64, seed=4
    )
    with pytest.raises(ValueError, match="chatterbot, chitchat, synthetic"):
        make_memories("nope", 10)
