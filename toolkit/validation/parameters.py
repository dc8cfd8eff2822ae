"""Notebook parameters checked against the types their ``parameters`` cell declares.

Each notebook's ``parameters`` cell annotates what it takes (``STAGES: list[int] = [0, 50, 100]``). The
cell after it calls :func:`check_parameters` with the notebook's globals, so a value of the wrong type
stops the run at once with the parameter's name, instead of a ``TypeError`` deep in the package. The
usual way in: ``papermill … -p STAGES "[0, 10, 50, 100]"`` passes that text as a *string* (``-p`` turns
only numbers and booleans into values); a list goes in with ``-y "STAGES: [0, 10, 50, 100]"``.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["NotebookParameterError", "check_parameters"]


class NotebookParameterError(TypeError):
    """One or more parameters are not of the type their notebook declares (each is named)."""


def _name(expected: Any) -> str:
    if expected is type(None):
        return "None"
    if isinstance(expected, type) and not typing.get_args(expected):
        return expected.__name__
    return str(expected).replace("typing.", "")


def _matches(value: Any, expected: Any) -> bool:
    if expected is Any:
        return True
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value if args)
    if origin is dict:
        return isinstance(value, dict) and all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items() if args
        )
    if expected is None or expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _hint(name: str, value: Any, expected: Any) -> str:
    """How to pass it, when a string arrived that would have been right as a value."""
    if not isinstance(value, str):
        return ""
    try:
        parsed = json.loads(value)
    except ValueError:
        return ""
    if not _matches(parsed, expected):
        return ""
    return f' (papermill -p passes text as it is; give the value as YAML: -y "{name}: {value}")'


def check_parameters(namespace: Mapping[str, Any]) -> None:
    """Raise :class:`NotebookParameterError` naming every annotated parameter of the wrong type.

    ``namespace`` is the notebook's ``globals()``: the annotations of its ``parameters`` cell
    (``__annotations__``) and the values now in force (the defaults, or what papermill injected).
    """
    problems = []
    for name, expected in (namespace.get("__annotations__") or {}).items():
        if name not in namespace:
            continue
        value = namespace[name]
        if not _matches(value, expected):
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            problems.append(
                f"parameter {name} must be {_name(expected)}, got {type(value).__name__} {shown}"
                + _hint(name, value, expected)
            )
    if problems:
        raise NotebookParameterError("; ".join(problems))
