"""Small builders for the metadata the UI shows: markdown tables that name files, bounded in size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg

MAX_ROWS = 50
MAX_CELL_CHARS = 300


def _cell(value: Any) -> str:
    text = "" if value is None else " ".join(str(value).split())
    if len(text) > MAX_CELL_CHARS:
        text = text[:MAX_CELL_CHARS] + "…"
    return text.replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], max_rows: int = MAX_ROWS) -> dg.MetadataValue:
    """A markdown table of at most `max_rows` rows, with a last line saying how many were left out."""
    if not rows:
        return dg.MetadataValue.md("_none_")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows[:max_rows]]
    if len(rows) > max_rows:
        lines.append(f"\n… and {len(rows) - max_rows} more")
    return dg.MetadataValue.md("\n".join(lines))


def month_label(month: str | None) -> str:
    """The month a check or report covers, as shown in the UI."""
    return month or "all months"
