"""Connections to the feature database: writers change a working copy, readers open a published snapshot.

DuckDB lets one process write a file and, while it does, refuses every other process, readers included. So the
atlas keeps two kinds of file (paths: storage.layout):

- The working copy `$ATLAS_HOME/atlas.duckdb`. Only `writer()` opens it, one process at a time: it first takes
  the writer lock (an `flock` on `atlas.duckdb.lock`, waited for up to `ATLAS_DB_LOCK_TIMEOUT` seconds, default
  120, then `DatabaseLockedError` naming the holder), then opens the file, migrates it and yields the connection.
- Published snapshots `$ATLAS_HOME/snapshots/atlas-<n>.duckdb`. When a writer finishes, `publish()` (still under
  the writer lock) checkpoints the working copy, copies it to the next snapshot and swaps the link
  `snapshots/atlas-current.duckdb` to it atomically (storage.snapshots). `reader()` and `query()` open the current
  snapshot read-only and never touch the working copy, so no reader ever waits for a writer, however long its
  transaction (7M `feature_edges` rows). The current and the previous snapshot are kept; a reader that loses a
  race with a swap retries on the new link.

  Why publish after every write rather than once per asset: readers in the writing process see their own writes
  (assets read what the previous step wrote), and nothing in `assets/` has to remember to publish. The cost is
  one file copy (copy_file_range + fsync) per write, paid by the writer. Measured on this 2-core machine while
  other jobs ran (`tests/storage/test_snapshot_reads.py` prints it): the default build's largest write,
  7.08M `feature_edges` rows, spends 22-42 s in its transaction and 0.6-1.1 s publishing a 598 MB file; a
  re-write spends 111-142 s in its transaction (the delete, then the insert) and 2-15 s publishing, because
  DuckDB reuses freed blocks but never shrinks the file (1.2-2.0 GB after the second write). At full depth (tens
  of GB) copies would dominate: group many small writes with `deferred()` (one publish at the end).

One write unit per asset (`transaction`): new files go to a fresh location claimed first (storage.artifacts), the
rows pointing to them commit in one transaction, the snapshot is published, and only then does the sweep delete
files that neither the working copy nor a kept snapshot references (old weights, a dead writer's half-written
files). A kill at any point leaves readers on a consistent snapshot; `tests/storage/test_write_units.py` kills a
writer (SIGKILL) at every named point (`ATLAS_TEST_CRASH_AT`, see `crash_point`).

One connection policy (the app's SQL console and its pages connect concurrently in one process): plain reads are
cursors on one shared read-only instance per process and snapshot; a reader with settings or a sandbox (the SQL
console) gets a DuckDB instance of its own, opened through a private hard link to the snapshot. So connections
with different settings never share an instance and DuckDB's "same database file with a different
configuration" cannot happen. Every failure to open a connection or to publish raises a subclass of
`AtlasDatabaseError` whose message names the problem and what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import re
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from storage import artifacts, layout, snapshots
from storage.schema import MIGRATIONS, SCHEMA_VERSION, TABLE_BY_NAME

log = logging.getLogger(__name__)


class AtlasDatabaseError(RuntimeError):
    """The atlas database could not be opened, published or used; the message says what to do."""


class DatabaseMissingError(AtlasDatabaseError, FileNotFoundError):
    """No atlas database (or no published snapshot of it) exists yet."""


class DatabaseLockedError(AtlasDatabaseError):
    """Another writer held the database longer than ATLAS_DB_LOCK_TIMEOUT."""


class DatabaseCorruptError(AtlasDatabaseError):
    """The file is not a DuckDB database this version can read."""


class DatabaseConfigError(AtlasDatabaseError):
    """This process already has the file open with other settings (a connection opened outside storage.db)."""


class DatabaseAccessError(AtlasDatabaseError):
    """The operating system refused a file operation (permissions, disk full, read-only filesystem)."""


class SchemaError(AtlasDatabaseError):
    """The database's schema does not match this code (newer version, unknown column)."""


CRASH_POINTS = (
    "files_written",  # storage functions: new files exist, no row points to them yet
    "in_transaction",  # rows inserted, not committed
    "committed",  # committed in the working copy, not checkpointed
    "checkpointed",  # working copy closed, not yet copied
    "snapshot_copied",  # the new snapshot is a temporary file, the link still names the old one
    "published",  # the link names the new snapshot; old snapshots and files not yet deleted
    "swept",  # everything done but releasing claims
)


def crash_point(name: str) -> None:
    """Testing hook: SIGKILL this process when ATLAS_TEST_CRASH_AT names this point (see CRASH_POINTS)."""
    if os.environ.get("ATLAS_TEST_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _lock_timeout() -> float:
    return float(os.environ.get("ATLAS_DB_LOCK_TIMEOUT", "120"))


def _writer_threads() -> int:
    """DuckDB threads of a writer: all cores but one, so the app's readers keep a core during a long write."""
    return max(1, int(os.environ.get("ATLAS_WRITER_THREADS", (os.cpu_count() or 2) - 1)))


def _keep_snapshots() -> int:
    return max(2, int(os.environ.get("ATLAS_SNAPSHOTS_KEEP", "2")))


# ---- opening connections ------------------------------------------------------------------------------------


def _translate(e: Exception, path: str, action: str) -> AtlasDatabaseError:
    """The storage.db exception for a failure to open or publish `path`."""
    msg = str(e)
    low = msg.lower()
    if isinstance(e, duckdb.ConnectionException) or "different configuration" in low:
        return DatabaseConfigError(
            f"Cannot {action} {path}: this process already has it open with other settings ({msg}). Open the "
            "atlas only through storage.db (reader/writer/query), whose connections never clash."
        )
    if isinstance(e, duckdb.InvalidInputException | duckdb.ParserException) and (
        "option" in low or "setting" in low or "must have" in low
    ):
        return DatabaseConfigError(
            f"Cannot {action} {path} with the settings given ({msg}). Check their names and values against "
            "`SELECT name, description FROM duckdb_settings()`."
        )
    if "not a valid duckdb database" in low or "serializ" in low or "storage version" in low:
        return DatabaseCorruptError(
            f"Cannot {action} {path}: it is not a DuckDB database this version can read ({msg}). Rebuild it "
            "with `make atlas` (or restore it from a snapshot under snapshots/)."
        )
    if isinstance(e, PermissionError) or "permission denied" in low:
        return DatabaseAccessError(
            f"Cannot {action} {path}: permission denied ({msg}). Check the owner and mode of $ATLAS_HOME."
        )
    return DatabaseAccessError(
        f"Cannot {action} {path} ({msg}). Check that $ATLAS_HOME is a writable local folder."
    )


def _is_lock_error(e: Exception) -> bool:
    msg = str(e).lower()
    return "lock" in msg or "conflicting" in msg or "being used by another process" in msg


def _connect_working(path: str, timeout: float | None = None) -> duckdb.DuckDBPyConnection:
    """A read-write connection to the working copy, retried while another program holds its DuckDB lock."""
    timeout = _lock_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            return duckdb.connect(path)
        except duckdb.IOException as e:
            if not _is_lock_error(e):
                raise _translate(e, path, "open") from e
            if time.monotonic() > deadline:
                raise DatabaseLockedError(
                    f"The atlas database {path} stayed locked by another process for {timeout:.0f}s "
                    f"({e}). Close the other program's connection to it (read snapshots/atlas-current.duckdb "
                    "instead), wait for it to finish, or raise ATLAS_DB_LOCK_TIMEOUT."
                ) from e
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)
        except duckdb.Error as e:
            raise _translate(e, path, "open") from e


def _quote(path: str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _read_config(sandboxed: bool, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    config = {"autoload_known_extensions": False, "autoinstall_known_extensions": False}
    for name, value in (settings or {}).items():
        if not _SETTING_NAME.match(name):
            raise ValueError(f"Not a DuckDB setting name: {name!r}")
        config[name] = value if isinstance(value, str) else str(value)
    if sandboxed:
        config["enable_external_access"] = False
    return config


def _attach_read_only(
    file: str, sandboxed: bool, settings: Mapping[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """A private in-memory instance with `file` attached READ_ONLY as the default catalog `atlas`.

    Used where a private link cannot be made (a read-only folder) and for the working copy before its first
    publish. Cursors of this connection start in the in-memory catalog: qualify names or `USE` on them.
    """
    con = duckdb.connect(":memory:", config=_read_config(False, settings))
    try:
        con.execute(f"ATTACH {_quote(file)} AS atlas (READ_ONLY)")
        con.execute("USE atlas")
        if sandboxed:
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def _open_snapshot(snap: Path, sandboxed: bool, settings: Mapping[str, Any]) -> duckdb.DuckDBPyConnection:
    """A read-only connection of its own to the snapshot `snap`.

    DuckDB shares one instance among the connections of a process that open the same path, and refuses a second
    connection whose settings differ. So each connection opens the snapshot through a private hard link
    `snapshots/readers/<pid>-<random>/atlas.duckdb` (same file, unique path, catalog still `atlas`), removed when
    it closes; `snapshots.prune` removes those of dead processes.
    """
    folder = snap.parent / "readers" / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    name = f"{snap.stem.rsplit('-', 1)[0]}.duckdb"
    try:
        folder.mkdir(parents=True)
        os.link(snap, folder / name)
    except FileNotFoundError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except OSError:  # no write access to the snapshot folder: a private in-memory instance instead
        shutil.rmtree(folder, ignore_errors=True)
        return _attach_read_only(str(snap), sandboxed, settings)
    try:
        con = duckdb.connect(str(folder / name), read_only=True, config=_read_config(sandboxed, settings))
        if sandboxed:
            con.execute("SET lock_configuration = true")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    _links[id(con)] = folder
    return con


_links: dict[int, Path] = {}  # id(connection) -> its private link folder
_shared: dict[str, duckdb.DuckDBPyConnection] = {}  # current snapshot -> this process's plain instance
_shared_lock = threading.Lock()


def _shared_cursor(snap: Path) -> duckdb.DuckDBPyConnection:
    """A cursor on this process's one plain read-only instance of `snap` (plain reads: no settings, no sandbox).

    Reusing the instance spares each query the instance start-up and keeps DuckDB's block cache warm (a card
    query: 42 ms instead of 70 ms on a 600 MB snapshot). When a newer snapshot appears the old parent is dropped,
    not closed: its instance lives until its last cursor closes.
    """
    key = str(snap)
    with _shared_lock:
        parent = _shared.get(key)
        if parent is None:
            parent = duckdb.connect(key, read_only=True, config=_read_config(False, None))
            _shared.clear()
            _shared[key] = parent
        return parent.cursor()


def _close_reader(con: duckdb.DuckDBPyConnection) -> None:
    con.close()
    folder = _links.pop(id(con), None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


# ---- the writer lock ----------------------------------------------------------------------------------------

_local = threading.local()


def lock_path(path: str) -> str:
    return str(path) + ".lock"


@contextlib.contextmanager
def _write_lock(path: str, wait: bool = True) -> Iterator[bool]:
    """Hold the writer lock of `path` (yields False without waiting when `wait` is off and it is busy)."""
    held = getattr(_local, "held", set())
    if path in held:
        raise AtlasDatabaseError(
            f"Nested writer on {path}: finish the open writer() before starting another."
        )
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise _translate(e, lock_path(path), "create the writer lock") from e
    try:
        deadline = time.monotonic() + _lock_timeout()
        delay = 0.02
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                if time.monotonic() > deadline:
                    holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                    raise DatabaseLockedError(
                        f"The atlas database {path} stayed locked by another writer ({holder}) for "
                        f"{_lock_timeout():.0f}s. Wait for that materialization to finish, or raise "
                        "ATLAS_DB_LOCK_TIMEOUT. Readers are not affected: they read the published snapshot."
                    ) from None
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        _local.held = held | {path}
        try:
            yield True
        finally:
            _local.held = held
    finally:
        os.close(fd)  # releases the flock


# ---- migrations, writers, publishing ------------------------------------------------------------------------


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


_deferred = threading.local()


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


def _publish_locked(
    path: str, working: duckdb.DuckDBPyConnection | None = None, timeout: float | None = None
) -> Path | None:
    """Publish `path` while holding its writer lock; `working` is an open connection to it (closed here)."""
    try:
        con = working or _connect_working(path, timeout)
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
        kept = snapshots.prune(path, _keep_snapshots())
    except OSError as e:
        raise _translate(e, path, "publish a snapshot of") from e
    if _manages_files(path):
        try:
            for old in kept[1:]:
                con = _attach_read_only(str(old), sandboxed=False)
                try:
                    referenced |= _referenced_files(con)
                finally:
                    con.close()
            removed = artifacts.sweep(referenced, path)
        except (duckdb.Error, OSError) as e:  # published all the same; the next publish sweeps again
            log.warning("skipped removing unreferenced files under %s: %s", layout.atlas_home(), e)
            removed = []
        if removed:
            log.info("removed %d unreferenced files under %s", len(removed), layout.atlas_home())
    crash_point("swept")
    return snap


def _manages_files(path: str) -> bool:
    """Only the atlas database of $ATLAS_HOME owns the files under its managed roots (never a bench copy)."""
    return os.path.abspath(path) == os.path.abspath(layout.db_path())


def publish(path: str | None = None, *, wait: bool = True) -> Path | None:
    """Make the working copy's committed state the snapshot readers see, then delete unreferenced files.

    Writers call this themselves; call it after a writer was killed between commit and publish (or run
    `python -m storage.db publish`). Returns the current snapshot, or None when `wait` is off and a writer is busy.
    """
    path = path or layout.db_path()
    if not Path(path).exists():
        raise DatabaseMissingError(f"No atlas database at {path}; run `make atlas` (or set ATLAS_HOME).")
    with _write_lock(path, wait=wait) as got:
        if not got:
            return None
        return _publish_locked(path, timeout=None if wait else 0.0)


@contextlib.contextmanager
def writer(path: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection to the migrated working copy, held under the writer lock; when the block succeeds
    the result is published for readers (unless inside `deferred()`)."""
    path = path or layout.db_path()
    with _write_lock(path):
        con = _connect_working(path)
        try:
            con.execute(f"SET threads = {_writer_threads()}")
            migrate(con)
            yield con
        except BaseException:
            con.close()
            raise
        if getattr(_deferred, "depth", 0):
            con.close()
            _deferred.pending = getattr(_deferred, "pending", set()) | {path}
            return
        _publish_locked(path, con)


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


# ---- readers ------------------------------------------------------------------------------------------------


def published_path(path: str | None = None) -> Path | None:
    """The snapshot readers currently open (None before the first publish); its name changes on each publish."""
    return snapshots.current(path or layout.db_path())


_SETTING_NAME = re.compile(r"^[a-z_]+$")


@contextlib.contextmanager
def reader(
    path: str | None = None, *, sandboxed: bool = False, settings: Mapping[str, Any] | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short read-only connection to the published snapshot; never waits for a writer.

    `settings` are DuckDB options set on this connection's private instance (e.g. {"memory_limit": "512MB",
    "threads": 1}); `sandboxed` then forbids any file or network access and locks the settings (SQL console).
    A database written before snapshots existed is published on first read.
    """
    con = _open_reader(path or layout.db_path(), sandboxed, dict(settings or {}))
    try:
        yield con
    finally:
        _close_reader(con)


def _open_reader(path: str, sandboxed: bool, settings: dict[str, Any]) -> duckdb.DuckDBPyConnection:
    for _attempt in range(8):
        snap = snapshots.current(path)
        if snap is None:
            if not Path(path).exists():
                raise DatabaseMissingError(
                    f"No atlas database at {path}; run `make atlas` (or set ATLAS_HOME)."
                )
            try:
                published = publish(path, wait=False)  # a database from before snapshots
            except (DatabaseMissingError, DatabaseCorruptError):
                raise
            except AtlasDatabaseError as e:  # e.g. a read-only folder: read the file itself
                log.warning("could not publish %s (%s); reading it directly", path, e)
                published = None
            if published is None:
                return _legacy_reader(path, sandboxed, settings)
            continue
        try:
            if sandboxed or settings:
                return _open_snapshot(snap, sandboxed, settings)
            try:
                return _shared_cursor(snap)
            except duckdb.ConnectionException:  # opened elsewhere in this process with other settings
                return _open_snapshot(snap, sandboxed, settings)
        except (FileNotFoundError, duckdb.IOException) as e:
            if snap.exists():
                raise _translate(e, str(snap), "open") from e
            # a publish removed it between resolving the link and opening: resolve again
        except duckdb.Error as e:
            raise _translate(e, str(snap), "open") from e
    raise AtlasDatabaseError(
        f"The snapshots of {path} changed faster than a reader could open one; retry, or publish less often."
    )


def _legacy_reader(path: str, sandboxed: bool, settings: dict[str, Any]) -> duckdb.DuckDBPyConnection:
    """Read the working copy itself (only before its first publish), retried while a writer holds it."""
    deadline = time.monotonic() + _lock_timeout()
    while True:
        try:
            return _attach_read_only(path, sandboxed, settings)
        except duckdb.IOException as e:
            if not _is_lock_error(e):
                raise _translate(e, path, "open") from e
            if time.monotonic() > deadline:
                raise DatabaseLockedError(
                    f"The atlas database {path} has no published snapshot yet and stayed locked by a writer for "
                    f"{_lock_timeout():.0f}s. Wait for the materialization to finish (it publishes one)."
                ) from e
            time.sleep(0.1)
        except duckdb.Error as e:
            raise _translate(e, path, "open") from e


# ---- rows ---------------------------------------------------------------------------------------------------


def now() -> pl.Expr:
    """The current UTC time to microseconds, as a literal for a `created_at` column."""
    return pl.lit(datetime.now(timezone.utc).replace(tzinfo=None), dtype=pl.Datetime("us"))


_POLARS_TYPES = {
    "VARCHAR": pl.Utf8,
    "INTEGER": pl.Int32,
    "BIGINT": pl.Int64,
    "REAL": pl.Float32,
    "DOUBLE": pl.Float64,
    "BOOLEAN": pl.Boolean,
    "TIMESTAMP": pl.Datetime("us"),
}


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


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["publish"]:
        print(publish())
    else:
        sys.exit("usage: python -m storage.db publish")
