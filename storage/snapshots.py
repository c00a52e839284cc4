"""Published snapshots of the feature database: read-only copies that readers open while writers change the
working copy (see storage.db for when they are made).

For a database `<dir>/atlas.duckdb` the snapshots are `<dir>/snapshots/atlas-<n>.duckdb` (n counts up) and the
symlink `<dir>/snapshots/atlas-current.duckdb` names the current one. Publishing is two steps so that a kill
between them is harmless: `copy(db)` writes the checkpointed working file to a hidden temporary name and fsyncs
it; `activate(tmp)` renames it to the next number and repoints the link by renaming a new link over the old one
(one atomic step: a reader resolves either the old or the new snapshot, never a partial file). A snapshot keeps
the working file's size and modification time, which is how `up_to_date` tells that nothing changed since.
`prune` keeps the current snapshot and the previous one and deletes the rest with any temporary leftovers and
the private reader links (`readers/<pid>-*`, see storage.db) of processes that died.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path


def folder(db: str) -> Path:
    return Path(db).parent / "snapshots"


def link(db: str) -> Path:
    """The symlink naming the current snapshot of `db` (a stable path for raw DuckDB users)."""
    return folder(db) / f"{Path(db).stem}-current.duckdb"


def current(db: str) -> Path | None:
    """The current snapshot of `db`, or None when none has been published."""
    try:
        return folder(db) / os.readlink(link(db))
    except (FileNotFoundError, NotADirectoryError):
        return None


def numbered(db: str) -> list[tuple[int, Path]]:
    """Every published snapshot of `db` as (n, path), oldest first."""
    pattern = re.compile(rf"^{re.escape(Path(db).stem)}-(\d+)\.duckdb$")
    out = []
    if folder(db).exists():
        for p in folder(db).iterdir():
            m = pattern.match(p.name)
            if m and not p.is_symlink():
                out.append((int(m.group(1)), p))
    return sorted(out)


def up_to_date(db: str) -> bool:
    """The current snapshot has the working file's size and modification time (nothing written since)."""
    snap = current(db)
    try:
        a, b = os.stat(db), os.stat(snap) if snap else None
    except FileNotFoundError:
        return False
    return b is not None and (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy(db: str) -> Path:
    """Copy the (checkpointed, writer-locked) working file to a temporary file in the snapshot folder."""
    out = folder(db)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{Path(db).stem}-{os.getpid()}.duckdb.tmp"
    shutil.copyfile(db, tmp)  # copy_file_range/sendfile on Linux
    _fsync(tmp)
    st = os.stat(db)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    return tmp


def activate(db: str, tmp: Path) -> Path:
    """Give the copy `tmp` the next snapshot number and make it current (atomic link swap); returns its path."""
    n = max((i for i, _ in numbered(db)), default=0) + 1
    target = folder(db) / f"{Path(db).stem}-{n:06d}.duckdb"
    os.replace(tmp, target)
    new_link = folder(db) / f".{link(db).name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.remove(new_link)
    os.symlink(target.name, new_link)
    os.replace(new_link, link(db))
    _fsync(folder(db))
    return target


def prune(db: str, keep: int = 2) -> list[Path]:
    """Delete all but the current snapshot and the `keep - 1` before it, and temporary leftovers; returns the kept
    ones (newest first). Linux keeps a deleted file readable for connections that already have it open."""
    cur = current(db)
    snaps = numbered(db)
    cur_n = next((n for n, p in snaps if cur is not None and p.name == cur.name), None)
    older = [p for n, p in reversed(snaps) if cur_n is not None and n < cur_n]
    kept = ([cur] if cur_n is not None else []) + older[: max(keep - 1, 0)]
    for _, p in numbered(db):
        if p not in kept:
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
    for p in folder(db).glob(f".{Path(db).stem}-*.tmp") if folder(db).exists() else []:
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)
    readers = folder(db) / "readers"
    for p in readers.iterdir() if readers.exists() else []:
        if not _alive(int(p.name.split("-")[0]) if p.name.split("-")[0].isdigit() else -1):
            shutil.rmtree(p, ignore_errors=True)  # a reader that died without closing
    return kept


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
