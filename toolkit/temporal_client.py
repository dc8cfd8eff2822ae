"""Connecting to Temporal: the local dev server, a self-hosted cluster (mTLS) or Temporal Cloud (API key)."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client, TLSConfig

from toolkit.settings import Settings


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
    )
