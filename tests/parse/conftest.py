"""Fixtures for the batch-request storage tests: real Parse Server, real users, real files."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from toolkit.parse import ParseClient
from toolkit.parse import batch_requests as store
from toolkit.parse.models import MemoryItem
from toolkit.parse.users import ParseUser
from toolkit.settings import Settings

UNICODE_MEMORIES: list[dict[str, Any]] = [
    {"content": "emoji 🎉👩‍👩‍👧‍👦🏳️‍🌈 and astral 𝄞", "type": "text", "metadata": {"tag": "🙂"}},
    {
        "content": "中文记忆：今天天气很好。日本語のメモ。한국어 메모.",
        "type": "document",
        "metadata": {"语言": "zh"},
    },
    {"content": 'Grüße aus Köln! Café ☕ — «quotes» "double" \\ back', "type": "text", "metadata": {}},
    {
        "content": "def greet(name):\n    return f'héllo {name} 🐍'\n",
        "type": "code_snippet",
        "metadata": {"lang": "python", "nested": {"list": [1, 2.5, None, True], "rtl": "שלום مرحبا"}},
    },
]

CreateBatch = Callable[..., Awaitable[str]]
"""``await create_batch(memories=None, **create_kwargs) -> request_id``."""


@pytest.fixture
def unicode_memories() -> list[dict[str, Any]]:
    """Emoji, CJK, RTL, escapes, code and nested metadata."""
    return [dict(m) for m in UNICODE_MEMORIES]


# The create keywords that go into the request's Submission (who submitted it, and how to answer them).
SUBMISSION_FIELDS = [field.name for field in dataclasses.fields(store.Submission)]


def items(memories: Sequence[dict[str, Any]]) -> list[MemoryItem]:
    return [MemoryItem.model_validate(m) for m in memories]


@pytest.fixture
async def create_batch(
    parse: ParseClient, settings: Settings, user: ParseUser, unique: str
) -> AsyncIterator[CreateBatch]:
    """Create batches of ``user`` (unless ``user_id=`` says otherwise); all deleted after the test."""
    created: list[str] = []
    counter = 0

    async def create(memories: Sequence[dict[str, Any]] | None = None, **kw: Any) -> str:
        nonlocal counter
        counter += 1
        kw.setdefault("batch_id", f"st{unique}{counter}")
        kw.setdefault("user_id", user.object_id)
        submission = store.Submission(**{name: kw.pop(name) for name in SUBMISSION_FIELDS if name in kw})
        request_id = await store.create_batch_memory_request_in_parse(
            parse,
            kw.pop("settings", settings),
            memories=items(memories or UNICODE_MEMORIES),
            submission=submission,
            **kw,
        )
        created.append(request_id)
        return request_id

    yield create
    for request_id in created:
        await store.delete_batch_request(parse, request_id)
