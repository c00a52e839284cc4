"""Test helpers that judge an $ATLAS_HOME from the outside: which files its databases point to, which files
nothing points to, and which rows point to files that are gone. Independent of storage.artifacts' own sweep."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

FILE_COLUMNS = (("transcoders", "weights_path"), ("activation_shards", "path"))
MANAGED = ("transcoders", "activations")


def referenced(db_file: str | Path) -> set[str]:
    """Absolute paths in the file columns of the database `db_file` (opened read-only on its own)."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{db_file}' AS d (READ_ONLY)")
        tables = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'd'"
            ).fetchall()
        }
        out = set()
        for table, column in FILE_COLUMNS:
            if table in tables:
                out |= {
                    os.path.abspath(r[0]) for r in con.execute(f"SELECT {column} FROM d.{table}").fetchall()
                }
        return out
    finally:
        con.close()


def databases(home: str | Path) -> list[Path]:
    """The working copy and every snapshot file under `home`."""
    home = Path(home)
    snaps = sorted(p for p in (home / "snapshots").glob("atlas-*.duckdb") if not p.is_symlink())
    return [p for p in [home / "atlas.duckdb", *snaps] if p.exists()]


def dangling(db_file: str | Path) -> list[str]:
    """Paths that `db_file` points to but that do not exist."""
    return sorted(p for p in referenced(db_file) if not os.path.exists(p))


def _covered(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(r + os.sep) for r in roots)


def orphans(home: str | Path) -> list[str]:
    """Everything under `home` that should not be there: files under transcoders/ and activations/ that no
    database (working copy or snapshot) points to, temporary leftovers, claim and reader-link leftovers."""
    home = Path(home).resolve()
    refs = set().union(*(referenced(d) for d in databases(home))) if databases(home) else set()
    bad = []
    for folder, _, names in os.walk(home):
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, home).split(os.sep)
            if rel[0] in MANAGED and not _covered(path, refs):
                bad.append(path)
            elif name.endswith(".tmp") or rel[0] == "claims" or rel[:2] == ["snapshots", "readers"]:
                bad.append(path)
    for root in MANAGED:
        for folder, dirs, names in os.walk(home / root):
            if not dirs and not names and folder != str(home / root):
                bad.append(folder + "/ (empty)")
    return sorted(bad)
