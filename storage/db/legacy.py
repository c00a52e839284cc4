"""A database written before snapshots existed: the first reader publishes it, or, where it cannot (a writer is
busy, a read-only folder), reads the working copy itself."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import duckdb

from storage.db import env, read_only, writer_lock
from storage.db.errors import AtlasDatabaseError, DatabaseCorruptError, DatabaseMissingError
from storage.db.publishing import publish

log = logging.getLogger(__name__)


def open_unpublished(
    path: str, sandboxed: bool, settings: Mapping[str, Any]
) -> duckdb.DuckDBPyConnection | None:
    """None once `path` (which has no snapshot yet) is published, so the caller opens the snapshot; otherwise a
    read-only connection to the working copy itself."""
    try:
        if publish(path, wait=False) is not None:
            return None
    except (DatabaseMissingError, DatabaseCorruptError):
        raise
    except AtlasDatabaseError as e:  # e.g. a read-only folder: read the file itself
        log.warning("could not publish %s (%s); reading it directly", path, e)
    return _read_working_copy(path, sandboxed, settings)


def _read_working_copy(path: str, sandboxed: bool, settings: Mapping[str, Any]) -> duckdb.DuckDBPyConnection:
    """Read the working copy itself (only before its first publish), retried while a writer holds it."""
    return writer_lock.open_past_lock(
        lambda: read_only.attach(path, sandboxed, settings),
        path,
        env.lock_timeout(),
        lambda e: (
            f"The atlas database {path} has no published snapshot yet and stayed locked by a writer for "
            f"{env.lock_timeout():.0f}s. Wait for the materialization to finish (it publishes one)."
        ),
    )
