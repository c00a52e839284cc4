"""storage/sql_console.py: the app's sandboxed SQL console, against the fixture atlas."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import layout, sql_console
from storage.db import readers
from tests.app.fixture_db import D_SAE


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("CREATE TABLE x (a INTEGER)", "read-only: CREATE"),
        ("INSERT INTO vocab VALUES ('m', 1, 'x')", "read-only: INSERT"),
        ("COPY features TO 'out.csv'", "read-only: COPY"),
        ("ATTACH 'other.duckdb' AS o", "read-only: ATTACH"),
        ("INSTALL httpfs", "read-only: INSTALL statements"),
        ("FORCE INSTALL httpfs", "read-only: FORCE INSTALL statements"),
        ("LOAD httpfs", "read-only: LOAD statements"),
        ("CHECKPOINT", "read-only: CHECKPOINT statements"),
        ("FORCE CHECKPOINT", "read-only: FORCE CHECKPOINT statements"),
        ("CALL pragma_version()", "read-only: CALL statements"),
        ("SET enable_external_access = true", "read-only: SET statements"),
        ("RESET memory_limit", "read-only: RESET statements"),
        ("USE memory", "read-only: USE statements"),
        ("PRAGMA version", "read-only: PRAGMA statements"),
        ("VACUUM", "read-only: VACUUM statements"),
        ("DETACH atlas", "read-only: DETACH statements"),
        ("EXPORT DATABASE 'dump'", "read-only: EXPORT statements"),
        ("CREATE SECRET (TYPE s3, KEY_ID 'k', SECRET 's')", "read-only: CREATE statements"),
        ("UPDATE features SET label = 'x'", "read-only: UPDATE statements"),
        ("DELETE FROM features", "read-only: DELETE statements"),
        ("WITH x AS (SELECT 1) INSERT INTO vocab SELECT 'm', 1, 'x'", "read-only: INSERT statements"),
        ("EXPLAIN COPY features TO 'out.csv'", "read-only: EXPLAIN COPY statements"),
        ("EXPLAIN ANALYZE COPY features TO 'out.csv'", "read-only: EXPLAIN COPY statements"),
        ("explain analyze /* c */ copy features to 'out.csv'", "read-only: EXPLAIN COPY statements"),
        ("EXPLAIN (ANALYZE, FORMAT JSON) COPY features TO 'out.csv'", "read-only: EXPLAIN COPY statements"),
        ("EXPLAIN ANALYZE INSERT INTO vocab VALUES ('m', 1, 'x')", "read-only: EXPLAIN INSERT statements"),
        ("EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1", "read-only: EXPLAIN CREATE statements"),
        ("EXPLAIN ANALYZE PRAGMA version", "read-only: EXPLAIN PRAGMA statements"),
        ("EXPLAIN ANALYZE SELECT 1; SELECT 2", "one statement"),
        ("SELECT 1; DROP TABLE features", "one statement"),
        ("SELECT * FROM read_csv('/etc/passwd')", "cannot read or write files"),
        ("SELECT * FROM read_parquet('/etc/hosts')", "cannot read or write files"),
        ("SELEC 1", "Could not parse"),
    ],
)
def test_console_rejects_anything_but_one_read(fixture_atlas, sql, message):
    with pytest.raises(sql_console.SqlRejected, match=message):
        sql_console.run_console(sql)
    assert readers.query("SELECT count(*) AS n FROM features")["n"][0] == 2 * D_SAE  # nothing changed


def test_explain_analyze_copy_into_the_temp_folder_writes_nothing(fixture_atlas):
    """DuckDB always lets a connection write into its temp folder (<db>.tmp); the console must never get there."""
    tmp = Path(layout.db_path() + ".tmp")
    tmp.mkdir(exist_ok=True)
    for sql in (
        f"EXPLAIN ANALYZE COPY (SELECT 'pwned' AS x) TO '{tmp}/x.csv'",
        f"EXPLAIN ANALYZE COPY features TO '{tmp}/y.csv' (HEADER false)",
        f"EXPLAIN (ANALYZE) COPY (SELECT 1) TO '{tmp}/z.csv'",
    ):
        with pytest.raises(sql_console.SqlRejected, match="EXPLAIN COPY"):
            sql_console.run_console(sql)
    assert list(tmp.iterdir()) == []


def test_console_allows_explain_and_explain_analyze_of_reads(fixture_atlas):
    for sql in (
        "EXPLAIN SELECT * FROM features",
        "EXPLAIN ANALYZE SELECT count(*) FROM features",
        "EXPLAIN (FORMAT JSON) SELECT 1",
        "EXPLAIN ANALYZE (SELECT 1)",
        "-- a comment\nEXPLAIN ANALYZE FROM features",
    ):
        assert sql_console.run_console(sql)[0].height >= 1, sql


def test_console_runs_with_a_memory_limit_and_a_temp_space_limit(fixture_atlas):
    """The console's connection: at most 2 GB of memory, a small temp-space cap, no external access (DuckDB's
    defaults are 80% of RAM and 90% of the free disk)."""
    with sql_console.console_connection() as con:
        settings = sql_console.console_settings(con)
    assert sql_console._size_bytes(settings["memory_limit"]) <= 2 * 2**30, settings
    assert sql_console._size_bytes(settings["max_temp_directory_size"]) <= 2**30, settings
    assert settings["enable_external_access"] == "false", settings
    # a user cannot lift them: SET is refused before it reaches the connection
    with pytest.raises(sql_console.SqlRejected, match="SET"):
        sql_console.run_console("SET memory_limit = '100GB'")


def test_size_parsing_of_duckdb_settings():
    assert sql_console._size_bytes("953.6 MiB") == pytest.approx(
        953.6 * 2**20, rel=1e-9
    )  # parsing, float64 arithmetic
    assert sql_console._size_bytes("18.8 GiB") > 2 * 2**30 and sql_console._size_bytes("0 bytes") == 0
    assert sql_console._size_bytes("90% of available disk space") == float("inf")


def test_console_reads_limits_rows_and_stops_long_queries(fixture_atlas):
    rows, cut = sql_console.run_console("WITH f AS (SELECT * FROM features) SELECT count(*) AS n FROM f")
    assert rows["n"][0] == 32 and not cut
    assert sql_console.run_console("DESCRIBE features")[0].height > 10
    assert sql_console.run_console("EXPLAIN SELECT * FROM features")[0].height >= 1
    rows, cut = sql_console.run_console("SELECT * FROM range(5000)", max_rows=100)
    assert rows.height == 100 and cut
    with pytest.raises(sql_console.SqlRejected, match="longer than"):
        sql_console.run_console("SELECT count(*) FROM range(100000000000) a", timeout_s=0.5)
    with pytest.raises(sql_console.SqlError, match="nosuch"):
        sql_console.run_console("SELECT * FROM nosuch")


def test_console_refuses_to_run_when_its_limits_are_not_in_force(fixture_atlas, monkeypatch):
    """The check before any user SQL: a connection opened with more memory than the cap runs nothing."""
    monkeypatch.setattr(sql_console, "CONSOLE_LIMITS", {**sql_console.CONSOLE_LIMITS, "memory_limit": "8GB"})
    with pytest.raises(sql_console.SqlError, match="sandbox is not in force"):
        sql_console.run_console("SELECT 1")
