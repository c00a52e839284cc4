"""The write API: `writer()` is a read-write connection to the migrated working copy under the writer lock,
published for readers when its block succeeds; `transaction()` is one write unit (BEGIN ... COMMIT, then publish).

One write unit per asset: new files go to a fresh location claimed first (storage.artifacts), the rows pointing to
them commit in one transaction, the snapshot is published, and only then does the sweep delete what no kept
database references (storage.db.publishing). `tests/storage/test_write_units.py` kills a writer at every named point
(storage.db.crash_points).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import duckdb

from storage import layout
from storage.db import env, publishing, writer_lock
from storage.db.crash_points import crash_point
from storage.db.migrations import migrate


@contextlib.contextmanager
def writer(path: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection to the migrated working copy, held under the writer lock; when the block succeeds
    the result is published for readers (unless inside `publishing.deferred()`)."""
    path = path or layout.db_path()
    with writer_lock.hold(path):
        con = writer_lock.connect_working(path)
        try:
            con.execute(f"SET threads = {env.writer_threads()}")
            migrate(con)
            yield con
        except BaseException:
            con.close()
            raise
        publishing.after_write(path, con)


@contextlib.contextmanager
def transaction(path: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """One write unit: BEGIN, the block's statements, COMMIT (ROLLBACK on error), then publish."""
    with writer(path) as con:
        con.execute("BEGIN")
        try:
            yield con
            crash_point("in_transaction")
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        crash_point("committed")
