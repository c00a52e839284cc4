"""Who may open the working copy read-write: one writer at a time, by an `flock` on `<database>.lock` (waited for
up to ATLAS_DB_LOCK_TIMEOUT seconds, then DatabaseLockedError naming the holder), and then DuckDB's own file lock,
which another program holding the file keeps (`connect_working` retries it, as `open_past_lock` retries any open).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import duckdb

from storage.db import env
from storage.db.errors import AtlasDatabaseError, DatabaseLockedError, is_lock_error, translate

T = TypeVar("T")

_local = threading.local()  # .held: the databases whose writer lock this thread holds


def _pauses(timeout: float) -> Iterator[None]:
    """Yields after each pause of a jittered exponential backoff (20 ms doubling to 0.5 s) until `timeout` seconds
    have passed since the first call: the caller retries after each."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 0.5)
        yield


def _lock_file(path: str) -> str:
    return str(path) + ".lock"


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


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
        locked = _try_flock(fd) or (wait and any(_try_flock(fd) for _ in _pauses(env.lock_timeout())))
        if not locked and not wait:
            yield False
            return
        if not locked:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise DatabaseLockedError(
                f"The atlas database {path} stayed locked by another writer ({holder}) for "
                f"{env.lock_timeout():.0f}s. Wait for that materialization to finish, or raise "
                "ATLAS_DB_LOCK_TIMEOUT. Readers are not affected: they read the published snapshot."
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        _local.held = held | {path}
        try:
            yield True
        finally:
            _local.held = held
    finally:
        os.close(fd)  # releases the flock


def open_past_lock(
    open_: Callable[[], T], path: str, timeout: float, locked: Callable[[duckdb.IOException], str]
) -> T:
    """`open_()`, retried while DuckDB reports that another process holds the file `path`, for `timeout` seconds;
    then DatabaseLockedError with the message `locked(DuckDB's error)`. Other DuckDB errors are translated."""
    error = None
    for _ in itertools.chain([None], _pauses(timeout)):  # a first try, then one after each pause
        try:
            return open_()
        except duckdb.IOException as e:
            if not is_lock_error(e):
                raise translate(e, path, "open") from e
            error = e
        except duckdb.Error as e:
            raise translate(e, path, "open") from e
    raise DatabaseLockedError(locked(error)) from error


def connect_working(path: str, timeout: float | None = None) -> duckdb.DuckDBPyConnection:
    """A read-write connection to the working copy, retried while another program holds its DuckDB lock (for
    `timeout` seconds, ATLAS_DB_LOCK_TIMEOUT by default). Call it while holding the writer lock."""
    timeout = env.lock_timeout() if timeout is None else timeout
    return open_past_lock(
        lambda: duckdb.connect(path),
        path,
        timeout,
        lambda e: (
            f"The atlas database {path} stayed locked by another process for {timeout:.0f}s ({e}). Close "
            "the other program's connection to it (read snapshots/atlas-current.duckdb instead), wait for it to "
            "finish, or raise ATLAS_DB_LOCK_TIMEOUT."
        ),
    )
