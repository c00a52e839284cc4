"""Replacing a table's rows from polars frames: delete the rows a key selects, insert the new ones, in one write
unit (`write`, `write_many`) or inside the caller's transaction (`replace_rows`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import duckdb
import polars as pl

from storage.db.errors import SchemaError
from storage.db.working_copy import transaction
from storage.schema import TABLE_BY_NAME

_POLARS_TYPES = {
    "VARCHAR": pl.Utf8,
    "INTEGER": pl.Int32,
    "BIGINT": pl.Int64,
    "REAL": pl.Float32,
    "DOUBLE": pl.Float64,
    "BOOLEAN": pl.Boolean,
    "TIMESTAMP": pl.Datetime("us"),
}


def now() -> pl.Expr:
    """The current UTC time to microseconds, as a literal for a `created_at` column."""
    return pl.lit(datetime.now(timezone.utc).replace(tzinfo=None), dtype=pl.Datetime("us"))


def polars_schema(table: str) -> dict[str, pl.DataType]:
    """{column: polars dtype} of a table's scalar columns, in declared order, for building its rows."""
    return {c.name: _POLARS_TYPES[c.type] for c in TABLE_BY_NAME[table].columns if c.type in _POLARS_TYPES}


def replace_rows(
    con: duckdb.DuckDBPyConnection, table: str, rows: pl.DataFrame, where: Mapping[str, Any]
) -> int:
    """Delete the rows of `table` matching `where` (column = value, list = IN), then insert `rows`.

    Runs inside the caller's transaction if one is open. Columns of `rows` must be a subset of the table's.
    """
    spec = TABLE_BY_NAME[table]
    known = {c.name for c in spec.columns}
    unknown = set(rows.columns) - known
    if unknown:
        raise SchemaError(f"Columns {sorted(unknown)} are not in table {table}; add a migration first.")
    clauses, params = [], []
    for col, value in where.items():
        if isinstance(value, list | tuple):
            clauses.append(f"{col} IN (SELECT unnest(?))")
        else:
            clauses.append(f"{col} = ?")
        params.append(list(value) if isinstance(value, list | tuple) else value)
    if clauses:
        con.execute(f"DELETE FROM {table} WHERE " + " AND ".join(clauses), params)
    if rows.height:
        con.register("_rows", rows.to_arrow())
        cols = ", ".join(rows.columns)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _rows")
        con.unregister("_rows")
    return rows.height


def write(table: str, rows: pl.DataFrame, where: Mapping[str, Any], path: str | None = None) -> int:
    """Atomically replace the rows of `table` matching `where` with `rows` (one write unit)."""
    with transaction(path) as con:
        n = replace_rows(con, table, rows, where)
    return n


def write_many(tables: list[tuple[str, pl.DataFrame, Mapping[str, Any]]], path: str | None = None) -> None:
    """Replace rows in several tables in one transaction (all or nothing), then publish."""
    with transaction(path) as con:
        for table, rows, where in tables:
            replace_rows(con, table, rows, where)
