"""Errors raised by the Parse client. Catch :class:`ParseError` for all of them."""

from __future__ import annotations


class ParseError(Exception):
    """Parse Server answered with an error. ``code`` is Parse's error code (or None)."""

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class ObjectNotFound(ParseError):
    """Parse code 101: the object does not exist, or the caller may not see it."""


class PermissionDenied(ParseError):
    """Parse code 119 / HTTP 403, or an invalid session (code 209)."""


class DuplicateValue(ParseError):
    """Parse code 137: an object with this objectId (or unique value) already exists."""


class ParseUnavailable(ParseError):
    """Parse Server could not be reached, timed out or answered 5xx. Safe to retry later."""


OBJECT_NOT_FOUND = 101
OPERATION_FORBIDDEN = 119
DUPLICATE_VALUE = 137
INVALID_SESSION_TOKEN = 209
CLASS_ALREADY_EXISTS = 103


def error_for(status: int, body: object) -> ParseError:
    """Map an HTTP status and Parse's ``{"code", "error"}`` body to the right exception."""
    code = body.get("code") if isinstance(body, dict) else None
    message = body.get("error") if isinstance(body, dict) else None
    text = f"Parse error {code}: {message}" if code is not None else f"Parse HTTP {status}: {body!r}"
    if status >= 500:
        return ParseUnavailable(text, code=code, status=status)
    if code == OBJECT_NOT_FOUND or status == 404:
        return ObjectNotFound(text, code=code, status=status)
    if code == DUPLICATE_VALUE:
        return DuplicateValue(text, code=code, status=status)
    if code in (OPERATION_FORBIDDEN, INVALID_SESSION_TOKEN) or status in (401, 403):
        return PermissionDenied(text, code=code, status=status)
    return ParseError(text, code=code, status=status)
