"""Helpers that turn frames and numbers into Dagster materialization metadata."""

from __future__ import annotations

import dagster as dg
import polars as pl


def md_table(frame: pl.DataFrame, max_rows: int = 20, float_digits: int = 4) -> dg.MetadataValue:
    """A markdown table of the first `max_rows` rows (cells truncated, pipes escaped)."""

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.{float_digits}g}"
        return str(v).replace("|", "\\|").replace("\n", " ")[:80]

    head = frame.head(max_rows)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.iter_rows()]
    return dg.MetadataValue.md("\n".join(lines))
