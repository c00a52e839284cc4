"""Connections to the feature database: short-lived, retried on lock, migrated on first write.

DuckDB lets one process write a file at a time and refuses readers from other processes while it does, so
every caller opens a connection for one unit of work and closes it (`writer()` / `reader()`); a caller that
finds the file locked retries with backoff for `ATLAS_DB_LOCK_TIMEOUT` seconds (default 120) before raising
`DatabaseLockedError`. Writers replace rows as delete-then-insert inside one transaction, so re-running any
asset is idempotent and a failure leaves the previous rows intact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from storage import layout
from storage.schema import MIGRATIONS, SCHEMA_VERSION, TABLE_BY_NAME

log = logging.getLogger(__name__)


class DatabaseLockedError(RuntimeError):
    pass


class SchemaError(RuntimeError):
    pass


def _lock_timeout() -> float:
    return float(os.environ.get("ATLAS_DB_LOCK_TIMEOUT", "120"))


def _is_lock_error(e: Exception) -> bool:
    msg = str(e).lower()
    return "lock" in msg or "conflicting" in msg or "being used by another process" in msg


def _connect(path: str, read_only: bool, config: Mapping[str, Any] | None) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + _lock_timeout()
    delay = 0.02
    while True:
        try:
            return duckdb.connect(path, read_only=read_only, config=dict(config or {}))
        except duckdb.IOException as e:
            if not _is_lock_error(e):
                raise
            if time.monotonic() > deadline:
                raise DatabaseLockedError(
                    f"The atlas database {path} stayed locked by another process for {_lock_timeout():.0f}s "
                    f"({e}). Wait for the running materialization to finish, or raise ATLAS_DB_LOCK_TIMEOUT."
                ) from e
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the database to SCHEMA_VERSION; returns the version found before."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP)")
    found = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise SchemaError(
            f"Database schema version {found} is newer than this code ({SCHEMA_VERSION}); upgrade the code."
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        con.execute("BEGIN")
        for stmt in MIGRATIONS[version]:
            con.execute(stmt)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
        con.execute("COMMIT")
        log.info("migrated atlas database to schema version %d", version)
    return found


@contextlib.contextmanager
def writer(path: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short read-write connection to a migrated database."""
    path = path or layout.db_path()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    con = _connect(path, read_only=False, config=None)
    try:
        migrate(con)
        yield con
    finally:
        con.close()


@contextlib.contextmanager
def reader(path: str | None = None, *, sandboxed: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short read-only connection. `sandboxed` also forbids any file or network access (SQL console)."""
    path = path or layout.db_path()
    if not Path(path).exists():
        raise FileNotFoundError(f"No atlas database at {path}; run `make atlas` (or set ATLAS_HOME).")
    config = {"enable_external_access": False, "autoload_known_extensions": False} if sandboxed else None
    con = _connect(path, read_only=True, config=config)
    try:
        if sandboxed:
            con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()


def now() -> pl.Expr:
    """The current UTC time to microseconds, as a literal for a `created_at` column."""
    return pl.lit(datetime.now(timezone.utc).replace(tzinfo=None), dtype=pl.Datetime("us"))


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
    """Atomically replace the rows of `table` matching `where` with `rows` (one short transaction)."""
    with writer(path) as con:
        con.execute("BEGIN")
        try:
            n = replace_rows(con, table, rows, where)
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    return n


def write_many(tables: list[tuple[str, pl.DataFrame, Mapping[str, Any]]], path: str | None = None) -> None:
    """Replace rows in several tables in one transaction (all or nothing)."""
    with writer(path) as con:
        con.execute("BEGIN")
        try:
            for table, rows, where in tables:
                replace_rows(con, table, rows, where)
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise


def query(sql: str, params: list[Any] | None = None, path: str | None = None) -> pl.DataFrame:
    """Run one read-only query and return a polars frame."""
    with reader(path) as con:
        return frame(con, sql, params)


def frame(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
    """Rows of `sql` on an open connection as a polars frame (via Arrow)."""
    return pl.from_arrow(con.sql(sql, params=params or None).to_arrow_table())
