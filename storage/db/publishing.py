"""Publishing: the working copy's committed state becomes the snapshot readers open, then the sweep deletes the
files no kept database references.

Under the writer lock, `publish` checkpoints the working copy, copies it to the next snapshot and swaps the link
`snapshots/atlas-current.duckdb` to it atomically (storage.snapshots), keeps ATLAS_SNAPSHOTS_KEEP snapshots, and
only then lets `artifacts.sweep` delete the files under the managed roots that neither the working copy nor a kept
snapshot references (old weights, a dead writer's half-written files). A kill at any point leaves readers on a
consistent snapshot.

Writers publish after every write rather than once per asset: readers in the writing process see their own writes
(assets read what the previous step wrote), and nothing in `assets/` has to remember to publish. The cost is one
file copy (copy_file_range + fsync) per write, paid by the writer (`tests/storage/test_snapshot_reads.py` prints
it for a large write). DuckDB reuses freed blocks but never shrinks the file, so a re-write copies a larger file.
Group many small writes with `deferred()` (one publish at the end).

`python -m storage.db.publishing` publishes by hand (after a writer was killed between commit and publish).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb

from storage import artifacts, layout, snapshots
from storage.db import env, read_only, writer_lock
from storage.db.crash_points import crash_point
from storage.db.errors import DatabaseMissingError, translate

log = logging.getLogger(__name__)

_deferred = threading.local()  # .depth: nested deferred() blocks; .pending: databases to publish at the end


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Publish once at the end of the block instead of after every writer in it (for many small writes)."""
    depth = getattr(_deferred, "depth", 0)
    _deferred.depth = depth + 1
    try:
        yield
    finally:  # what committed is published even when a later write in the block failed
        _deferred.depth = depth
        if depth == 0 and getattr(_deferred, "pending", None):
            pending, _deferred.pending = _deferred.pending, set()
            for path in pending:
                publish(path)


def after_write(path: str, working: duckdb.DuckDBPyConnection) -> None:
    """Called by a writer that holds the lock of `path` and committed on `working` (closed here): publish now, or
    at the end of the enclosing `deferred()` block."""
    if getattr(_deferred, "depth", 0):
        working.close()
        _deferred.pending = getattr(_deferred, "pending", set()) | {path}
        return
    _publish_locked(path, working)


def publish(path: str | None = None, *, wait: bool = True) -> Path | None:
    """Make the working copy's committed state the snapshot readers see, then delete unreferenced files.

    Writers call this themselves; call it after a writer was killed between commit and publish. Returns the
    current snapshot, or None when `wait` is off and a writer is busy.
    """
    path = path or layout.db_path()
    if not Path(path).exists():
        raise DatabaseMissingError(f"No atlas database at {path}; run `make atlas` (or set ATLAS_HOME).")
    with writer_lock.hold(path, wait=wait) as got:
        if not got:
            return None
        return _publish_locked(path, timeout=None if wait else 0.0)


def _publish_locked(
    path: str, working: duckdb.DuckDBPyConnection | None = None, timeout: float | None = None
) -> Path | None:
    """Publish `path` while holding its writer lock; `working` is an open connection to it (closed here)."""
    try:
        con = working or writer_lock.connect_working(path, timeout)
        try:
            con.execute("CHECKPOINT")
            referenced = _referenced_files(con)
        finally:
            con.close()
        crash_point("checkpointed")
        if snapshots.up_to_date(path):
            snap = snapshots.current(path)
        else:
            tmp = snapshots.copy(path)
            crash_point("snapshot_copied")
            snap = snapshots.activate(path, tmp)
            crash_point("published")
        kept = snapshots.prune(path, env.keep_snapshots())
    except OSError as e:
        raise translate(e, path, "publish a snapshot of") from e
    if _manages_files(path):
        _sweep(path, referenced, kept[1:])
    crash_point("swept")
    return snap


def _sweep(path: str, referenced: set[str], older_snapshots: list[Path]) -> None:
    """Delete the managed files of `path` that neither `referenced` (the working copy's) nor an older kept
    snapshot names, nor a live claim covers."""
    try:
        for old in older_snapshots:
            con = read_only.attach(str(old), sandboxed=False)
            try:
                referenced |= _referenced_files(con)
            finally:
                con.close()
        removed = artifacts.sweep(referenced, path)
    except (duckdb.Error, OSError) as e:  # published all the same; the next publish sweeps again
        log.warning("skipped removing unreferenced files under %s: %s", layout.atlas_home(), e)
        return
    if removed:
        log.info("removed %d unreferenced files under %s", len(removed), layout.atlas_home())


def _referenced_files(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Every path in a file column (artifacts.FILE_COLUMNS) of the database on `con`."""
    tables = {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
        ).fetchall()
    }
    paths: set[str] = set()
    for table, column in artifacts.FILE_COLUMNS:
        if table in tables:
            paths |= {r[0] for r in con.execute(f"SELECT DISTINCT {column} FROM {table}").fetchall() if r[0]}
    return paths


def _manages_files(path: str) -> bool:
    """Only the atlas database of $ATLAS_HOME owns the files under its managed roots (never a bench copy)."""
    return os.path.abspath(path) == os.path.abspath(layout.db_path())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    log.info("published %s", publish())
