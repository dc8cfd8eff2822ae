"""Parse Server access: the REST client, its errors, the schema, and batch-request storage."""

from toolkit.parse._client import ParseClient
from toolkit.parse.errors import (
    DuplicateValue,
    ObjectNotFound,
    ParseError,
    ParseUnavailable,
    PermissionDenied,
)

__all__ = [
    "DuplicateValue",
    "ObjectNotFound",
    "ParseClient",
    "ParseError",
    "ParseUnavailable",
    "PermissionDenied",
]
