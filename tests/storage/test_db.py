import subprocess
import sys

import duckdb
import polars as pl
import pytest

from storage import layout, schema
from storage.db import errors, readers, row_writes, working_copy


def _vocab(strings):
    return pl.DataFrame({"model": "m", "token_id": list(range(len(strings))), "token_str": strings})


def test_replace_is_idempotent_and_scoped(atlas_home):
    row_writes.write("vocab", _vocab(["a", "b"]), {"model": "m"})
    row_writes.write(
        "vocab", pl.DataFrame({"model": "other", "token_id": [0], "token_str": ["z"]}), {"model": "other"}
    )
    row_writes.write("vocab", _vocab(["a", "c"]), {"model": "m"})
    rows = readers.query("SELECT model, token_id, token_str FROM vocab ORDER BY model, token_id")
    assert rows.rows() == [("m", 0, "a"), ("m", 1, "c"), ("other", 0, "z")]


def test_failed_write_leaves_previous_rows(atlas_home):
    row_writes.write("vocab", _vocab(["a", "b"]), {"model": "m"})
    duplicate_keys = pl.DataFrame({"model": "m", "token_id": [0, 0], "token_str": ["x", "y"]})
    with pytest.raises(duckdb.ConstraintException):
        row_writes.write("vocab", duplicate_keys, {"model": "m"})
    assert readers.query("SELECT token_str FROM vocab ORDER BY token_id")["token_str"].to_list() == ["a", "b"]


def test_unknown_column_names_the_table(atlas_home):
    with pytest.raises(errors.SchemaError, match=r"\['colour'\] are not in table vocab"):
        row_writes.write("vocab", _vocab(["a"]).with_columns(colour=pl.lit(1)), {"model": "m"})


def test_schema_version_recorded_and_newer_database_refused(atlas_home):
    row_writes.write("vocab", _vocab(["a"]), {"model": "m"})
    assert readers.query("SELECT max(version) v FROM schema_version")["v"][0] == schema.SCHEMA_VERSION
    with working_copy.writer() as con:
        con.execute("INSERT INTO schema_version VALUES (?, now())", [schema.SCHEMA_VERSION + 1])
    with pytest.raises(errors.SchemaError, match="newer than this code"):
        with working_copy.writer():
            pass


def test_every_table_and_column_is_documented():
    for table in schema.TABLES:
        assert table.doc and all(c.doc for c in table.columns), table.name
        assert set(table.key) <= {c.name for c in table.columns}
    doc = schema.markdown()
    assert all(f"`{t.name}`" in doc for t in schema.TABLES)


def test_reader_on_missing_database_says_what_to_do(atlas_home):
    with pytest.raises(FileNotFoundError, match="make atlas"):
        readers.query("SELECT 1")


HOLD_LOCK = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
con.close()
"""


def test_raw_lock_on_working_copy_blocks_writers_with_a_clear_error_but_not_readers(atlas_home, monkeypatch):
    row_writes.write("vocab", _vocab(["a"]), {"model": "m"})
    monkeypatch.setenv("ATLAS_DB_LOCK_TIMEOUT", "0.5")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, layout.db_path()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert (
            readers.query("SELECT count(*) n FROM vocab")["n"][0] == 1
        )  # readers use the published snapshot
        with pytest.raises(errors.DatabaseLockedError, match="stayed locked by another process"):
            row_writes.write("vocab", _vocab(["a", "b"]), {"model": "m"})
    finally:
        holder.communicate("release\n", timeout=60)
    row_writes.write("vocab", _vocab(["a", "b"]), {"model": "m"})  # usable again once released
    assert readers.query("SELECT count(*) n FROM vocab")["n"][0] == 2


HOLD_WRITER = """
import sys
from storage.db import working_copy
with working_copy.writer() as con:
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_second_writer_waits_then_names_the_holder(atlas_home, monkeypatch):
    row_writes.write("vocab", _vocab(["a"]), {"model": "m"})
    monkeypatch.setenv("ATLAS_DB_LOCK_TIMEOUT", "0.5")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(errors.DatabaseLockedError, match=f"another writer \\(pid {holder.pid} since"):
            row_writes.write("vocab", _vocab(["x"]), {"model": "m"})
        assert readers.query("SELECT token_str FROM vocab")["token_str"].to_list() == ["a"]
    finally:
        holder.communicate("release\n", timeout=60)
    assert isinstance(errors.DatabaseLockedError("x"), errors.AtlasDatabaseError)


def test_sandboxed_reader_blocks_files(atlas_home):
    row_writes.write("vocab", _vocab(["a"]), {"model": "m"})
    with readers.reader(sandboxed=True) as con, pytest.raises(duckdb.PermissionException):
        con.execute("SELECT * FROM read_csv('/etc/passwd')")


def test_unpublished_database_held_by_another_program_names_the_wait_then_reads(atlas_home, monkeypatch):
    """A database from before snapshots whose file another program holds: the first reader can neither publish it
    nor read it past DuckDB's lock, and says so after ATLAS_DB_LOCK_TIMEOUT; once released it publishes and reads."""
    path = layout.db_path()
    with duckdb.connect(path) as con:  # written by hand: no snapshot, no writer lock
        con.execute("CREATE TABLE t AS SELECT 1 AS a")
    monkeypatch.setenv("ATLAS_DB_LOCK_TIMEOUT", "0.5")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(errors.DatabaseLockedError, match="no published snapshot yet"):
            readers.query("SELECT a FROM t")
        assert readers.published_path() is None
    finally:
        holder.communicate("release\n", timeout=60)
    assert readers.query("SELECT a FROM t")["a"].to_list() == [1]
    assert readers.published_path() is not None
