"""Bringing a database to the schema version of this code (the statements: storage.schema.MIGRATIONS)."""

from __future__ import annotations

import logging

import duckdb

from storage.db.errors import SchemaError
from storage.schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the database to SCHEMA_VERSION, one transaction per version; returns the version found before."""
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
