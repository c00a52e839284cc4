"""The app's SQL console: one read-only statement at a time, in a sandbox.

Defence in depth: the statement is parsed and refused unless it is one read (SELECT / WITH / FROM / SHOW /
DESCRIBE / SUMMARIZE, or an EXPLAIN [ANALYZE] of one); then it runs on storage.db's sandboxed reader of the
published snapshot (read_only, enable_external_access=false: no files, no network) opened with CONSOLE_LIMITS and
its configuration locked, which `console_connection` checks are in force before any user SQL runs; the rows come
back cut at MAX_SQL_ROWS, and a timer interrupts a query after SQL_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from storage.db import readers

MAX_SQL_ROWS = 1000  # rows the SQL console returns at most
SQL_TIMEOUT_S = 20.0  # the console interrupts longer queries


class SqlError(ValueError):
    """A console query that failed (DuckDB's message included)."""


class SqlRejected(SqlError):
    """A console statement that is not a single read-only query (or that tried to touch files)."""


# The console's resource limits, applied to its connection before any user SQL runs. DuckDB's defaults are 80%
# of RAM and 90% of the free disk for spilling, which lets one query starve the machine the app serves from.
CONSOLE_LIMITS = {
    "memory_limit": "1GB",  # at most 2 GB (_CONSOLE_LIMIT_BYTES)
    "max_temp_directory_size": "256MB",  # spill space in the database's temp folder
    "threads": "2",
}
_CONSOLE_LIMIT_BYTES = {"memory_limit": 2 * 2**30, "max_temp_directory_size": 2**30}

_READ_ONLY = {duckdb.StatementType.SELECT}
# Statement types whose enum name is not the verb a user typed (INSTALL parses as LOAD, CHECKPOINT as CALL,
# USE/RESET as SET): refusals name the statement's first keyword instead.
_LEADING_WORDS = re.compile(r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*([A-Za-z]+)(?:\s+([A-Za-z]+))?", re.S)
_EXPLAIN = re.compile(r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*EXPLAIN\s+(?:ANALY[SZ]E\s+)?", re.I | re.S)
_EXPLAIN_OPTIONS = re.compile(r"\((?:[^()']|'[^']*')*\)\s*")
_QUERY_WORDS = {"WITH", "FROM", "SELECT", "VALUES", "TABLE"}


def _statement_name(stmt: duckdb.Statement) -> str:
    """The verb to name in a refusal: the statement's first keyword (two for FORCE ...), or its parsed type
    when it opens with WITH/FROM (`WITH x AS (...) INSERT ...` is an INSERT)."""
    m = _LEADING_WORDS.match(stmt.query)
    if not m:
        return stmt.type.name
    first, second = m.group(1).upper(), (m.group(2) or "").upper()
    if first in _QUERY_WORDS or first == "EXPLAIN":
        return stmt.type.name
    return f"{first} {second}" if first == "FORCE" and second else first


def _refuse(name: str) -> SqlRejected:
    return SqlRejected(
        f"The SQL console is read-only: {name} statements are not allowed. "
        "Use SELECT / WITH / FROM / SHOW / DESCRIBE / SUMMARIZE, or EXPLAIN [ANALYZE] of one of them; "
        "write to the atlas through Dagster assets."
    )


def _one_statement(sql: str):
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise SqlRejected(f"Could not parse the query: {e}") from e
    if len(statements) != 1:
        raise SqlRejected(f"Run one statement at a time (got {len(statements)}).")
    return statements[0]


def _explained(query: str):
    """The statement an EXPLAIN [ANALYZE] [(options)] explains, or None when it cannot be isolated."""
    m = _EXPLAIN.match(query)
    if not m:
        return None
    rest = query[m.end() :]
    opts = _EXPLAIN_OPTIONS.match(rest)
    for candidate in ([rest[opts.end() :]] if opts else []) + [rest]:  # '(...)' is options or a subquery
        try:
            statements = duckdb.extract_statements(candidate)
        except duckdb.Error:
            continue
        if len(statements) == 1:
            return statements[0]
    return None


def _check_sql(sql: str) -> str:
    """The one statement in `sql` if it is a read (SELECT/WITH/FROM/SHOW/DESCRIBE/SUMMARIZE), or an EXPLAIN
    [ANALYZE] whose explained statement is such a read; otherwise SqlRejected naming the statement.

    EXPLAIN ANALYZE runs its statement, so `EXPLAIN ANALYZE COPY ... TO` would write a file: the explained
    statement is parsed and checked like a top-level one.
    """
    stmt = _one_statement(sql)
    if stmt.type == duckdb.StatementType.EXPLAIN:
        inner = _explained(stmt.query)
        if inner is None or inner.type not in _READ_ONLY:
            raise _refuse(f"EXPLAIN {_statement_name(inner)}" if inner is not None else "this EXPLAIN")
        return stmt.query
    if stmt.type not in _READ_ONLY:
        raise _refuse(_statement_name(stmt))
    return stmt.query


def _size_bytes(text: str) -> float:
    """DuckDB's printed size ('953.6 MiB', '1.0 GiB', '0 bytes') in bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGTP]?i?B|bytes?)?\s*", text or "", re.I)
    if not m:  # '90% of available disk space', 'unlimited': no cap
        return float("inf")
    unit = (m.group(2) or "B").upper().replace("BYTES", "B").replace("BYTE", "B")
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    return float(m.group(1)) * scale.get(unit, 2**50)


def console_settings(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """The settings the console's safety rests on, as DuckDB reports them on `con`."""
    names = [*CONSOLE_LIMITS, "enable_external_access"]
    rows = con.execute(
        "SELECT name, value FROM duckdb_settings() WHERE name IN (SELECT unnest(?::VARCHAR[]))", [names]
    ).fetchall()
    return dict(rows)


def _check_console_limits(con: duckdb.DuckDBPyConnection) -> None:
    """Refuse to run anything on `con` unless its memory and temp-space limits and the sandbox are in force."""
    settings = console_settings(con)
    too_big = {
        k: settings.get(k)
        for k, cap in _CONSOLE_LIMIT_BYTES.items()
        if _size_bytes(settings.get(k, "")) > cap
    }
    if too_big or str(settings.get("enable_external_access")).lower() != "false":
        raise SqlError(f"The SQL console's sandbox is not in force ({settings}); the query was not run.")


@contextlib.contextmanager
def console_connection() -> Iterator[duckdb.DuckDBPyConnection]:
    """The SQL console's connection: storage.db's sandboxed reader (read_only, no file or network access, its
    configuration locked) opened with CONSOLE_LIMITS, checked before any user SQL runs."""
    with readers.reader(sandboxed=True, settings=CONSOLE_LIMITS) as con:
        _check_console_limits(con)
        yield con


def run_console(
    sql: str,
    params: dict[str, Any] | None = None,
    max_rows: int = MAX_SQL_ROWS,
    timeout_s: float = SQL_TIMEOUT_S,
) -> tuple[pl.DataFrame, bool]:
    """Run one read-only query in the sandbox; returns (at most `max_rows` rows, whether rows were cut off).

    `params` binds DuckDB named parameters ($name); those the query does not mention are ignored.

    Defence in depth: the statement type is checked first (EXPLAIN by what it explains), then the query runs on
    a connection that is read_only, has enable_external_access=false (no files, no network), a memory limit
    and a small temp-space limit (CONSOLE_LIMITS).
    """
    query = _check_sql(sql)
    used = {k: v for k, v in (params or {}).items() if re.search(rf"\${re.escape(k)}\b", query)}
    with console_connection() as con:
        timer = threading.Timer(timeout_s, con.interrupt)
        timer.start()
        try:
            batches = con.sql(query, params=used or None).to_arrow_reader(max(1, min(max_rows + 1, 10_000)))
            rows, tables = 0, []
            for batch in batches:
                tables.append(batch)
                rows += batch.num_rows
                if rows > max_rows:
                    break
            table = pa.Table.from_batches(tables, schema=batches.schema)
        except duckdb.PermissionException as e:
            raise SqlRejected(
                f"The SQL console cannot read or write files or reach the network ({e})."
            ) from e
        except duckdb.InterruptException as e:
            raise SqlRejected(f"The query ran longer than {timeout_s:.0f} s and was stopped.") from e
        except duckdb.OutOfMemoryException as e:
            raise SqlRejected(
                f"The query needs more than the console's {CONSOLE_LIMITS['memory_limit']} of memory and "
                f"{CONSOLE_LIMITS['max_temp_directory_size']} of temp space; aggregate or filter more ({e})."
            ) from e
        except duckdb.Error as e:
            raise SqlError(f"Query failed: {e}") from e
        finally:
            timer.cancel()
    return pl.from_arrow(table.slice(0, max_rows)), rows > max_rows
