"""Connecting to Temporal: the local dev server, a self-hosted cluster (mTLS) or Temporal Cloud (API key).

This is the one place clients are built, so the worker, the API, the bench and the notebooks share one
data converter: every client can read payloads kept in Parse Files by ``toolkit.temporal.external_storage``,
and stores its own large payloads there when ``TEMPORAL_EXTERNAL_STORAGE=1``.
"""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client, TLSConfig

from toolkit.settings import Settings
from toolkit.temporal.external_storage import data_converter


async def connect(settings: Settings) -> Client:
    tls: TLSConfig | bool = settings.temporal_tls
    if settings.temporal_tls_cert and settings.temporal_tls_key:
        tls = TLSConfig(
            client_cert=Path(settings.temporal_tls_cert).read_bytes(),
            client_private_key=Path(settings.temporal_tls_key).read_bytes(),
        )
    return await Client.connect(
        settings.temporal_target,
        namespace=settings.temporal_namespace,
        api_key=settings.temporal_api_key or None,
        tls=tls or bool(settings.temporal_api_key),
        data_converter=data_converter(settings),
    )
