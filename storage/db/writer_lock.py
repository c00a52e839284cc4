"""Who may open the working copy read-write: one writer at a time, by an `flock` on `<database>.lock` (waited for
up to ATLAS_DB_LOCK_TIMEOUT seconds, then DatabaseLockedError naming the holder), and then DuckDB's own file lock,
which another program holding the file keeps (`connect_working` retries it)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

from storage.db import env
from storage.db.errors import AtlasDatabaseError, DatabaseLockedError, is_lock_error, translate

_local = threading.local()  # .held: the databases whose writer lock this thread holds


def _lock_file(path: str) -> str:
    return str(path) + ".lock"


@contextlib.contextmanager
def hold(path: str, wait: bool = True) -> Iterator[bool]:
    """Hold the writer lock of `path` (yields False without waiting when `wait` is off and it is busy)."""
    held = getattr(_local, "held", set())
    if path in held:
        raise AtlasDatabaseError(
            f"Nested writer on {path}: finish the open writer() before starting another."
        )
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(_lock_file(path), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise translate(e, _lock_file(path), "create the writer lock") from e
    try:
        deadline = time.monotonic() + env.lock_timeout()
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
                        f"{env.lock_timeout():.0f}s. Wait for that materialization to finish, or raise "
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


def connect_working(path: str, timeout: float | None = None) -> duckdb.DuckDBPyConnection:
    """A read-write connection to the working copy, retried while another program holds its DuckDB lock (for
    `timeout` seconds, ATLAS_DB_LOCK_TIMEOUT by default). Call it while holding the writer lock."""
    timeout = env.lock_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            return duckdb.connect(path)
        except duckdb.IOException as e:
            if not is_lock_error(e):
                raise translate(e, path, "open") from e
            if time.monotonic() > deadline:
                raise DatabaseLockedError(
                    f"The atlas database {path} stayed locked by another process for {timeout:.0f}s "
                    f"({e}). Close the other program's connection to it (read snapshots/atlas-current.duckdb "
                    "instead), wait for it to finish, or raise ATLAS_DB_LOCK_TIMEOUT."
                ) from e
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)
        except duckdb.Error as e:
            raise translate(e, path, "open") from e
