"""Everything a notebook measures, as pandas DataFrames (design §7).

Functions that do I/O are ``async`` (notebooks use top-level ``await``; Locust calls them with
``asyncio.run``). The public names are re-exported here; each private module holds one concern:

- ``_batches``: :func:`collect_batches`, one row per batch request in a window (Parse + Temporal);
- ``_sweep``: both paths at several sizes (:func:`run_sweep`), the reduction and its gates;
- ``_driver``: the legacy path with Temporal external storage on (:func:`measure_legacy_with_driver`,
  :func:`run_driver_sweep`), side by side
  with both paths (:func:`driver_comparison`) and its gates (:func:`driver_gate_failures`);
- ``_compression``: codec × level × workload × size → ratio and speed, the 5× gate, a recommendation;
- ``_legacy_limit``: the batch size at which the server refuses a legacy start, found by trying;
- ``_storage``: Parse storage used by batch files, what cleanup would free, bytes per day;
- ``_monitoring``: per-period and per-path aggregations, legacy workflows still running.
"""

from toolkit.validation.metrics._batches import BATCH_COLUMNS, collect_batches, error_type
from toolkit.validation.metrics._compression import (
    COMPRESSION_COLUMNS,
    DEFAULT_LEVELS,
    CompressionMiss,
    Recommendation,
    batch_document,
    codec_recommendation,
    compression_misses,
    compression_table,
    recommend_codec,
)
from toolkit.validation.metrics._driver import (
    DRIVER_COLUMNS,
    DRIVER_MAX_INPUT_BYTES,
    DriverRunFigures,
    driver_comparison,
    driver_gate_failures,
    measure_legacy_with_driver,
    run_driver_sweep,
)
from toolkit.validation.metrics._legacy_limit import (
    LegacyFailurePoint,
    find_legacy_failure_point,
    legacy_input_payload_bytes,
)
from toolkit.validation.metrics._monitoring import (
    LEGACY_RUNNING_QUERY,
    error_rates,
    path_summary,
    per_period,
    running_legacy_workflows,
)
from toolkit.validation.metrics._storage import (
    DAILY_TARGET_BYTES,
    StorageAccount,
    storage_account,
    storage_days_over,
)
from toolkit.validation.metrics._sweep import (
    PAYLOAD_TARGETS,
    payload_gate_failures,
    payload_reduction,
    run_sweep,
)

__all__ = [
    "BATCH_COLUMNS",
    "COMPRESSION_COLUMNS",
    "DAILY_TARGET_BYTES",
    "DEFAULT_LEVELS",
    "DRIVER_COLUMNS",
    "DRIVER_MAX_INPUT_BYTES",
    "LEGACY_RUNNING_QUERY",
    "PAYLOAD_TARGETS",
    "CompressionMiss",
    "DriverRunFigures",
    "LegacyFailurePoint",
    "StorageAccount",
    "Recommendation",
    "batch_document",
    "codec_recommendation",
    "collect_batches",
    "driver_comparison",
    "driver_gate_failures",
    "compression_misses",
    "compression_table",
    "error_rates",
    "error_type",
    "find_legacy_failure_point",
    "legacy_input_payload_bytes",
    "measure_legacy_with_driver",
    "path_summary",
    "payload_gate_failures",
    "payload_reduction",
    "per_period",
    "recommend_codec",
    "run_driver_sweep",
    "run_sweep",
    "running_legacy_workflows",
    "storage_account",
    "storage_days_over",
]
