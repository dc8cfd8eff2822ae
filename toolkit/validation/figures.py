"""Figures a reader can use without seeing them: every plot carries an alternative text.

:func:`show_figure` displays a matplotlib figure as PNG with its alternative text in the output's
metadata (``image/png`` → ``alt``) and as its plain-text form; :func:`describe_figure` writes that text
from the figure itself (titles, axis labels with their units, the series in each legend), and a
notebook adds the sentence that matters (the verdict, the figure against its gate). The HTML copies of
the executed notebooks (:mod:`toolkit.validation.notebooks`) and the reports index put it into each
``<img alt=…>``.
"""

from __future__ import annotations

import base64
import io
from typing import Any

__all__ = ["ALT_KEY", "describe_figure", "figure_png", "show_figure"]

ALT_KEY = "alt"


def describe_figure(fig: Any) -> str:
    """A plain description of ``fig``: its title, then per panel the title, axes and series."""
    parts = []
    title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    if title:
        parts.append(f"{title}.")
    axes = [ax for ax in fig.get_axes() if ax.get_visible() and (ax.has_data() or ax.get_title())]
    for number, ax in enumerate(axes, start=1):
        panel = ax.get_title() or (f"panel {number}" if len(axes) > 1 else "")
        labels = [label for label in ax.get_legend_handles_labels()[1] if not label.startswith("_")]
        pieces = [
            f"x axis: {ax.get_xlabel()}" if ax.get_xlabel() else "",
            f"y axis: {ax.get_ylabel()}" if ax.get_ylabel() else "",
            f"series: {', '.join(dict.fromkeys(labels))}" if labels else "",
        ]
        described = "; ".join(piece for piece in pieces if piece)
        if panel or described:
            parts.append(f"{panel}{' (' + described + ')' if described else ''}.".lstrip())
    return " ".join(parts) or "A plot."


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def show_figure(fig: Any, alt: str | None = None) -> None:
    """Display ``fig`` in the notebook with alternative text (``alt`` first, then the description), and
    close it so the inline backend does not show it a second time."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    text = " ".join(part for part in (alt, describe_figure(fig)) if part)
    png = base64.b64encode(figure_png(fig)).decode("ascii")
    plt.close(fig)
    display({"image/png": png, "text/plain": text}, raw=True, metadata={"image/png": {ALT_KEY: text}})
