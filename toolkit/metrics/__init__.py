"""Everything a notebook measures, as pandas DataFrames (design §7).

Functions that do I/O are ``async`` (notebooks use top-level ``await``; Locust calls them with
``asyncio.run``). The public names are re-exported here; each private module holds one concern.
"""

from toolkit.metrics._batches import BATCH_COLUMNS, collect_batches, error_type

__all__ = ["BATCH_COLUMNS", "collect_batches", "error_type"]
