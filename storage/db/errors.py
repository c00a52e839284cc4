"""The exceptions of the atlas database: every failure to open, publish or use it raises a subclass of
`AtlasDatabaseError` whose message names the problem and what to do; `translate` turns DuckDB's and the operating
system's exceptions into them."""

from __future__ import annotations

import duckdb


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


def translate(e: Exception, path: str, action: str) -> AtlasDatabaseError:
    """The AtlasDatabaseError for a failure to `action` (open, publish a snapshot of, ...) `path`."""
    msg = str(e)
    low = msg.lower()
    if isinstance(e, duckdb.ConnectionException) or "different configuration" in low:
        return DatabaseConfigError(
            f"Cannot {action} {path}: this process already has it open with other settings ({msg}). Open the "
            "atlas only through storage.db (readers/writer), whose connections never clash."
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


def is_lock_error(e: Exception) -> bool:
    """Whether DuckDB refused to open a file because another process holds it."""
    msg = str(e).lower()
    return "lock" in msg or "conflicting" in msg or "being used by another process" in msg
