"""The environment variables that tune the atlas database, each read when it is used (defaults here, once)."""

from __future__ import annotations

import os


def lock_timeout() -> float:
    """ATLAS_DB_LOCK_TIMEOUT: seconds a writer (or a reader of an unpublished database) waits for a lock."""
    return float(os.environ.get("ATLAS_DB_LOCK_TIMEOUT", "120"))


def writer_threads() -> int:
    """ATLAS_WRITER_THREADS: DuckDB threads of a writer; all cores but one by default, so the app's readers keep a
    core during a long write."""
    return max(1, int(os.environ.get("ATLAS_WRITER_THREADS", (os.cpu_count() or 2) - 1)))


def keep_snapshots() -> int:
    """ATLAS_SNAPSHOTS_KEEP: published snapshots kept (at least 2: the current one and the one before)."""
    return max(2, int(os.environ.get("ATLAS_SNAPSHOTS_KEEP", "2")))
