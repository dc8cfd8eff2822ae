"""A payload audit of any Temporal namespace, read-only: which workflow types are near Temporal's limits.

:func:`audit_namespace` lists the runs started in a window through visibility, fetches the histories of the
``top_n`` largest runs of each workflow type, and answers per type: counts, history bytes and events
(p50/p95/max), the largest payload of each kind, the headroom to each limit, what external storage at a
threshold would move out, and a verdict in words (at risk, watch, fine). ``toolkit audit`` and the notebook
``00_payload_audit`` call it; :mod:`toolkit.validation.audit.plots` draws it.
"""

from __future__ import annotations

from temporalio.client import Client

from toolkit.settings import Settings
from toolkit.validation.audit.collect import AuditData, AuditWindow, ListedRun, Progress, collect
from toolkit.validation.audit.connection import (
    AuditError,
    BadAuditRequest,
    CredentialsRefused,
    NamespaceNotFound,
    TemporalUnreachable,
    connect_for_audit,
)
from toolkit.validation.audit.limits import LIMITS, Limit, Verdict
from toolkit.validation.audit.report import AuditReport, build_report
from toolkit.validation.audit.scan import PARSE_FILES_CLAIM_BYTES

__all__ = [
    "LIMITS",
    "PARSE_FILES_CLAIM_BYTES",
    "AuditData",
    "AuditError",
    "AuditReport",
    "AuditWindow",
    "BadAuditRequest",
    "CredentialsRefused",
    "Limit",
    "ListedRun",
    "NamespaceNotFound",
    "Progress",
    "TemporalUnreachable",
    "Verdict",
    "audit_namespace",
    "connect_for_audit",
]


async def audit_namespace(
    client: Client,
    settings: Settings,
    window: AuditWindow,
    *,
    top_n: int = 10,
    threshold: int | None = None,
    max_listed: int = 50_000,
    max_described: int = 500,
    progress: Progress | None = None,
) -> AuditReport:
    """Audit the client's namespace over ``window``. ``threshold``: the external-storage what-if (bytes;
    default ``TEMPORAL_EXTERNAL_STORAGE_THRESHOLD``). An empty window gives a report whose
    :meth:`AuditReport.message` says there is nothing to audit."""
    data = await collect(
        client,
        settings,
        window,
        top_n=top_n,
        threshold=threshold,
        max_listed=max_listed,
        max_described=max_described,
        progress=progress,
    )
    return build_report(data)
