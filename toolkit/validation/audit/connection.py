"""Reaching the namespace to audit, and the errors that say in words why it could not be read.

The audit connects with the stack's own settings (``toolkit.temporal.client.connect``: address, namespace,
TLS or an API key), so it reads a local dev server, a self-hosted cluster or Temporal Cloud alike.
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from toolkit.settings import Settings
from toolkit.temporal.client import connect

__all__ = [
    "AuditError",
    "BadAuditRequest",
    "CredentialsRefused",
    "NamespaceNotFound",
    "TemporalUnreachable",
    "connect_for_audit",
    "explain_rpc_error",
]


class AuditError(Exception):
    """The audit could not run. The message says why in words; it never holds a payload."""


class TemporalUnreachable(AuditError):
    """No Temporal frontend answered at the address (refused, unknown host, TLS mismatch, timeout)."""


class CredentialsRefused(AuditError):
    """The frontend answered but refused the client: API key, mTLS certificate or its permissions."""


class NamespaceNotFound(AuditError):
    """The frontend has no such namespace."""


class BadAuditRequest(AuditError):
    """The window, the extra query or a bound is not one the audit or the server accepts."""


# Words for the transport errors the SDK's core reports as text (``Failed client connect: ...``).
_TRANSPORT_CAUSES = (
    ("Connection refused", "connection refused: nothing listens there"),
    ("dns error", "the host name does not resolve"),
    ("InvalidContentType", "the TLS handshake failed: TLS is on here but the server speaks plain gRPC"),
    ("certificate", "the TLS handshake failed: the certificate was not accepted"),
    ("tls", "the TLS handshake failed"),
    ("timed out", "the connection timed out"),
    ("Timeout", "the connection timed out"),
)


def _transport_cause(text: str) -> str:
    for marker, words in _TRANSPORT_CAUSES:
        if marker in text:
            return words
    return text.splitlines()[0][:200] if text else "unknown transport error"


def explain_rpc_error(error: RPCError, settings: Settings) -> AuditError:
    """The named audit error for a refused call, with the server's own message."""
    where = f"namespace {settings.temporal_namespace!r} at {settings.temporal_target}"
    if error.status in (RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED):
        return CredentialsRefused(
            f"{where} refused the credentials ({error.status.name}: {error.message}); "
            "check TEMPORAL_API_KEY or TEMPORAL_TLS_CERT / TEMPORAL_TLS_KEY"
        )
    if error.status == RPCStatusCode.NOT_FOUND:
        return NamespaceNotFound(f"{where}: {error.message} (TEMPORAL_NAMESPACE)")
    if error.status == RPCStatusCode.INVALID_ARGUMENT:
        return BadAuditRequest(f"{where} refused the listing query: {error.message}")
    if error.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
        return TemporalUnreachable(f"{where} did not answer ({error.status.name}): {error.message}")
    return AuditError(f"{where} answered {error.status.name}: {error.message}")


async def connect_for_audit(settings: Settings) -> Client:
    """A client for the settings' namespace, or a named :class:`AuditError` saying why there is none."""
    error: AuditError
    try:
        return await connect(settings)
    except OSError as exc:  # a TLS certificate or key file that cannot be read
        error = CredentialsRefused(f"cannot read the TLS client certificate or key: {exc}")
    except RPCError as exc:
        error = explain_rpc_error(exc, settings)
    except RuntimeError as exc:
        error = TemporalUnreachable(
            f"cannot reach Temporal at {settings.temporal_target}: {_transport_cause(str(exc))} "
            "(TEMPORAL_ADDRESS, TEMPORAL_TLS, TEMPORAL_API_KEY)"
        )
    # Raised outside the handler: an error that kept the SDK's (and its traceback's frames) as context would
    # keep the SDK's core objects alive until the interpreter ends, and their release then aborts the process.
    raise error
