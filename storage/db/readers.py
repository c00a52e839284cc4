"""The read API: short read-only connections to the published snapshot, which never wait for a writer.

`reader()` yields a connection, `query()` runs one statement and returns a polars frame, `frame()` runs one on an
open connection, `published_path()` names the snapshot readers currently open (it changes on each publish). A
reader that loses a race with a publish (its snapshot removed between resolving the link and opening it) resolves
the link again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from storage import layout, snapshots
from storage.db import legacy, read_only
from storage.db.errors import AtlasDatabaseError, DatabaseMissingError, translate


def published_path(path: str | None = None) -> Path | None:
    """The snapshot readers currently open (None before the first publish); its name changes on each publish."""
    return snapshots.current(path or layout.db_path())


@contextlib.contextmanager
def reader(
    path: str | None = None, *, sandboxed: bool = False, settings: Mapping[str, Any] | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short read-only connection to the published snapshot; never waits for a writer.

    `settings` are DuckDB options set on this connection's private instance (e.g. {"memory_limit": "512MB",
    "threads": 1}); `sandboxed` then forbids any file or network access and locks the settings (SQL console).
    A database written before snapshots existed is published on first read (storage.db.legacy).
    """
    con = _open(path or layout.db_path(), sandboxed, dict(settings or {}))
    try:
        yield con
    finally:
        read_only.close(con)


def _open(path: str, sandboxed: bool, settings: dict[str, Any]) -> duckdb.DuckDBPyConnection:
    for _attempt in range(8):
        snap = snapshots.current(path)
        if snap is None:
            if not Path(path).exists():
                raise DatabaseMissingError(
                    f"No atlas database at {path}; run `make atlas` (or set ATLAS_HOME)."
                )
            con = legacy.open_unpublished(path, sandboxed, settings)
            if con is not None:
                return con
            continue
        try:
            if sandboxed or settings:
                return read_only.open_private(snap, sandboxed, settings)
            try:
                return read_only.shared_cursor(snap)
            except duckdb.ConnectionException:  # opened elsewhere in this process with other settings
                return read_only.open_private(snap, sandboxed, settings)
        except (FileNotFoundError, duckdb.IOException) as e:
            if snap.exists():
                raise translate(e, str(snap), "open") from e
            # a publish removed it between resolving the link and opening: resolve again
        except duckdb.Error as e:
            raise translate(e, str(snap), "open") from e
    raise AtlasDatabaseError(
        f"The snapshots of {path} changed faster than a reader could open one; retry, or publish less often."
    )


def query(
    sql: str, params: list[Any] | Mapping[str, Any] | None = None, path: str | None = None
) -> pl.DataFrame:
    """Run one read-only query on the published snapshot and return a polars frame."""
    with reader(path) as con:
        return frame(con, sql, params)


def frame(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | Mapping[str, Any] | None = None
) -> pl.DataFrame:
    """Rows of `sql` on an open connection as a polars frame (via Arrow)."""
    return pl.from_arrow(con.sql(sql, params=params or None).to_arrow_table())
