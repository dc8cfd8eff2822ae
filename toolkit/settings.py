"""One settings object for every command, notebook and locustfile.

Values come from environment variables first, then from ``.stack/stack.env`` (written by
``toolkit stack up``), then from the defaults below. Build it once with :func:`load_settings`
and pass it down; nothing else in the package reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent

# Keys that `toolkit stack up` writes to stack.env (design §4.1), in the order they are written.
STACK_ENV_KEYS = (
    "TOOLKIT_API_URL",
    "PARSE_SERVER_URL",
    "PARSE_APP_ID",
    "PARSE_REST_API_KEY",
    "PARSE_MASTER_KEY",
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_TASK_QUEUE",
    "TEMPORAL_UI_URL",
)


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def read_env_file(path: Path) -> dict[str, str]:
    """Read ``KEY=VALUE`` lines; blank lines and ``#`` comments are ignored."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class Settings:
    """Everything configurable. Field names map to upper-case environment variables."""

    stack_dir: Path = REPO_ROOT / ".stack"
    # The checkout whose code this process runs: `toolkit scale-out` and `compare_variants` start their
    # API and worker processes from it unless a variant names another checkout.
    checkout_dir: Path = REPO_ROOT

    # Ports of the local stack (ignored when pointing at existing services).
    postgres_port: int = 54329
    parse_port: int = 1337
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    api_port: int = 8000
    bind_host: str = "127.0.0.1"

    # Where the services are. Empty means "the local stack on the ports above".
    toolkit_api_url: str = ""
    parse_server_url: str = ""
    parse_app_id: str = "batch-memory-toolkit"
    parse_rest_api_key: str = ""
    parse_master_key: str = ""
    temporal_address: str = ""
    temporal_namespace: str = "default"
    temporal_task_queue: str = "batch-memory"
    temporal_ui_url: str = ""
    # Temporal Cloud / a TLS cluster: an API key, or a client cert and key (paths).
    temporal_api_key: str = ""
    temporal_tls: bool = False
    temporal_tls_cert: str = ""
    temporal_tls_key: str = ""

    # Limits of the batch API (design §4.3).
    max_batch_memories: int = 100_000
    max_memory_bytes: int = 15_000
    max_batch_bytes: int = 200 * 1024 * 1024

    # Rollout defaults; the live values are in Parse Config.
    use_parse_batch_storage: bool = False
    parse_batch_canary_percent: int = 0

    # Storage and processing.
    gzip_level: int = 6
    max_decompressed_bytes: int = 512 * 1024 * 1024
    writer_batch_size: int = 50
    writer_concurrency: int = 4
    parse_timeout_s: float = 30.0
    webhook_allow_private: bool = False
    cleanup_policy: str = "never"  # "never", "on_completion" or "after_days"
    cleanup_after_days: int = 7
    webhook_max_attempts: int = 5
    webhook_backoff_s: float = 1.0
    webhook_timeout_s: float = 10.0
    worker_max_concurrent_activities: int = 50
    # How long an activity waits out one outage of Parse (unreachable, 5xx, its database down) before
    # its batch gives up on it: as long as an operator would wait, hours, not minutes (issue 17).
    outage_retry_s: float = 6 * 3600.0
    # On SIGTERM/SIGINT a worker stops taking tasks and gives its running activities this long to
    # finish; then it cancels them and Temporal retries them elsewhere from their last checkpoint. Keep
    # it a few seconds under the orchestrator's own grace period (Kubernetes: 30 s by default).
    worker_graceful_shutdown_s: float = 5.0
    # How long the API waits for Temporal to start a workflow before it asks whether the start landed.
    api_start_timeout_s: float = 15.0
    # Abuse limit: a request body that sends nothing for this long is refused with 408 (a slow client
    # would otherwise hold a connection and its partial body for as long as it likes).
    body_idle_timeout_s: float = 30.0
    # Abuse limit: batches one user may have pending or processing at once (0 = no limit).
    max_batches_in_flight: int = 20
    # Where a worker serves Temporal SDK metrics for Prometheus (0 = off; `toolkit stack up` picks one).
    worker_metrics_port: int = 0
    # Where the local Temporal dev server serves its own metrics (0 = a port it picks and nobody knows;
    # `toolkit stack up` picks one and keeps it in stack.env).
    temporal_metrics_port: int = 0
    # Chunked batches (issue 10): a batch of more than batch_chunk_memories memories (or more than
    # batch_chunk_max_bytes of JSON) is stored as several gzip NDJSON chunk files of at most that
    # size each, and processed by one activity per chunk, at most batch_chunk_window at a time.
    batch_chunk_memories: int = 5_000
    batch_chunk_max_bytes: int = 16 * 1024 * 1024
    batch_chunk_window: int = 4

    # Temporal external storage on Parse Files (toolkit.temporal.external_storage). Every client and worker
    # can always *read* a payload stored there; this switch decides whether this process *stores* payloads of
    # at least the threshold (bytes) there instead of inline in the history.
    temporal_external_storage: bool = False
    temporal_external_storage_threshold: int = 256 * 1024

    # Where load runs are recorded (loadtests/locustfile.py writes, notebook 06 reads).
    load_report_root: Path = REPO_ROOT / "reports" / "load"

    # Derived URLs -------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return self.toolkit_api_url or f"http://{self.bind_host}:{self.api_port}"

    @property
    def parse_url(self) -> str:
        return (self.parse_server_url or f"http://{self.bind_host}:{self.parse_port}/parse").rstrip("/")

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"{self.bind_host}:{self.temporal_port}"

    @property
    def parse_metrics_url(self) -> str:
        """Parse Server's request counts (``parse-server/request-counts.js``), at its origin's root."""
        parts = urlsplit(self.parse_url)
        return f"{parts.scheme}://{parts.netloc}/metrics"

    @property
    def temporal_metrics_url(self) -> str | None:
        """The local Temporal dev server's own metrics; None when no port is known."""
        port = self.temporal_metrics_port
        return f"http://{self.bind_host}:{port}/metrics" if port > 0 else None

    @property
    def temporal_ui(self) -> str:
        return self.temporal_ui_url or f"http://{self.bind_host}:{self.temporal_ui_port}"

    @property
    def stack_env_file(self) -> Path:
        return self.stack_dir / "stack.env"

    def stack_env(self) -> dict[str, str]:
        """The values written to ``stack.env``."""
        return {
            "TOOLKIT_API_URL": self.api_url,
            "PARSE_SERVER_URL": self.parse_url,
            "PARSE_APP_ID": self.parse_app_id,
            "PARSE_REST_API_KEY": self.parse_rest_api_key,
            "PARSE_MASTER_KEY": self.parse_master_key,
            "TEMPORAL_ADDRESS": self.temporal_target,
            "TEMPORAL_NAMESPACE": self.temporal_namespace,
            "TEMPORAL_TASK_QUEUE": self.temporal_task_queue,
            "TEMPORAL_UI_URL": self.temporal_ui,
            "WEBHOOK_ALLOW_PRIVATE": "1" if self.webhook_allow_private else "0",
            "WORKER_METRICS_PORT": str(self.worker_metrics_port),
            "TEMPORAL_METRICS_PORT": str(self.temporal_metrics_port),
        }


def _convert(name: str, annotation: str, raw: str) -> object:
    if annotation == "int":
        return int(raw)
    if annotation == "float":
        return float(raw)
    if annotation == "bool":
        return _parse_bool(raw)
    if annotation == "Path":
        return Path(raw).expanduser()
    return raw


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build the settings: environment first, then ``<stack dir>/stack.env``, then defaults.

    ``TOOLKIT_STACK_DIR`` chooses the stack directory (``make test`` uses its own), and so which
    ``stack.env`` is read.
    """
    env = dict(os.environ if environ is None else environ)
    stack_dir = Path(env.get("TOOLKIT_STACK_DIR") or REPO_ROOT / ".stack").expanduser().resolve()
    file_values = read_env_file(stack_dir / "stack.env")
    merged = {**file_values, **env}

    values: dict[str, object] = {"stack_dir": stack_dir}
    for f in fields(Settings):
        if f.name == "stack_dir":
            continue
        raw = merged.get(f.name.upper())
        if raw is None or raw == "":
            continue
        try:
            values[f.name] = _convert(f.name, str(f.type), raw)
        except ValueError as exc:
            raise ValueError(f"invalid value for {f.name.upper()}: {exc}") from None
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]
