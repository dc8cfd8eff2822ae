"""The headline figures a notebook records, kept in its executed copy and read back by the runner.

A notebook calls :func:`record_summary` with a dict of JSON-able figures; it becomes an output of its
own MIME type in the executed notebook (the scrapbook "glue" idea without the dependency), which
:func:`read_summary` finds again: ``make run`` prints them and the reports index plots them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["SUMMARY_MIME", "read_summary", "record_summary"]

SUMMARY_MIME = "application/vnd.batch-memory-toolkit.summary+json"


def record_summary(summary: Mapping[str, Any]) -> None:
    """Called from a notebook: keep ``summary`` (JSON-able headline figures) in the executed copy."""
    from IPython.display import display

    data = json.loads(json.dumps(dict(summary), default=str))  # fail here, not when reading it back
    text = "\n".join(f"{key}: {value}" for key, value in data.items())
    display({SUMMARY_MIME: data, "text/plain": text}, raw=True)


def read_summary(executed: Path) -> dict[str, Any]:
    """The merged summaries a notebook recorded ({} if none); later records win on the same key."""
    import nbformat

    notebook = nbformat.read(executed, as_version=4)
    summary: dict[str, Any] = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if SUMMARY_MIME in data:
                summary.update(data[SUMMARY_MIME])
    return summary
