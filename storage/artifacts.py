"""Files that tables point to (transcoder weights, activation shards): claims on files being written, and the
sweep that deletes files no table points to any more.

The rule that keeps a kill anywhere harmless: a write unit writes new files to a fresh location, commits rows that
point to them, and only then may older files go. Two pieces enforce the "only then":

- `claim(path)` before writing a fresh location: an exclusive `flock` on a small lock file under
  `<database folder>/claims/`, held by the writing process until `release(path)`. The kernel drops the lock when
  the process dies, even by SIGKILL, so a dead writer's files are recognisable as orphans.
- `sweep(referenced)`, run by `storage.db.publishing` under the writer lock after a commit: every file under the
  managed roots (`layout.managed_roots()`: transcoders/, activations/) that is neither in, nor under a folder in,
  `referenced` (the working database's and every kept snapshot's file columns) nor under a live claim is deleted,
  then the folders it emptied. It lists files before claims, so a file it sees was claimed before it was written.

Checkpoints, models, corpora and exports are not managed: no table points to them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from storage import layout

# (table, column) pairs whose values are paths of files or folders under $ATLAS_HOME.
FILE_COLUMNS = (("transcoders", "weights_path"), ("activation_shards", "path"))

_held: dict[str, int] = {}  # normalized claimed path -> fd of its lock file (this process)


def norm(path: str) -> str:
    """One spelling per location: absolute local paths, protocol-less remote ones (as fsspec lists them)."""
    if layout.is_remote(path):
        return layout.fs_for(path)._strip_protocol(path).rstrip("/")
    return os.path.abspath(path)


def claims_dir(db_path: str | None = None) -> Path:
    return Path(db_path or layout.db_path()).parent / "claims"


def _claim_file(path: str, db_path: str | None) -> Path:
    return claims_dir(db_path) / (hashlib.sha1(norm(path).encode()).hexdigest()[:20] + ".lock")


def claim(path: str, db_path: str | None = None) -> str:
    """Mark `path` (a file or folder about to be written) as in flight, so no sweep deletes it; returns `path`."""
    key = norm(path)
    if key in _held:
        return path
    file = _claim_file(path, db_path)
    file.parent.mkdir(parents=True, exist_ok=True)
    # Locked and filled under a temporary name, then renamed: a sweep never sees an empty or unlocked claim.
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, key.encode())
    os.replace(tmp, file)
    _held[key] = fd
    return path


def release(path: str, db_path: str | None = None) -> None:
    """End the claim on `path` (its rows are committed, or its files were removed)."""
    fd = _held.pop(norm(path), None)
    if fd is None:
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(_claim_file(path, db_path))
    os.close(fd)


def live_claims(db_path: str | None = None) -> set[str]:
    """Claimed paths whose owner is alive; lock files of dead owners are removed."""
    folder = claims_dir(db_path)
    if not folder.exists():
        return set()
    live = set(_held)
    for file in [*folder.glob("*.lock"), *folder.glob("*.tmp")]:
        try:
            fd = os.open(file, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            text = os.read(fd, 1 << 16).decode(errors="replace")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live.add(text)  # held by a running writer
                continue
            if text not in _held:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(file)  # its writer died: the claim is over
        finally:
            os.close(fd)
    return live


def _covered(path: str, prefixes: set[str]) -> bool:
    """`path` is in `prefixes` or lies under one of them."""
    p = path
    while True:
        if p in prefixes:
            return True
        parent = os.path.dirname(p)
        if parent == p or not parent:
            return False
        p = parent


def _list_files(root: str) -> tuple[list[str], list[str]]:
    """(files, folders) under `root`, normalized."""
    if layout.is_remote(root):
        fs = layout.fs_for(root)
        if not fs.exists(root):
            return [], []
        found = fs.find(root, withdirs=True, detail=True)
        files = [norm(p) for p, info in found.items() if info["type"] != "directory"]
        dirs = [norm(p) for p, info in found.items() if info["type"] == "directory"]
        return files, dirs
    files, dirs = [], []
    for folder, subdirs, names in os.walk(root):
        files += [os.path.join(norm(folder), n) for n in names]
        dirs += [os.path.join(norm(folder), d) for d in subdirs]
    return files, dirs


def sweep(referenced: Iterable[str], db_path: str | None = None) -> list[str]:
    """Delete the managed files that nothing references or claims, and the folders left empty; returns them."""
    keep = {norm(p) for p in referenced if p}
    listed = {root: _list_files(root) for root in layout.managed_roots()}
    claimed = live_claims(db_path)  # after listing: every listed file was claimed before it was written
    removed = []
    for root, (files, dirs) in listed.items():
        fs = layout.fs_for(root)
        for f in files:
            if not (_covered(f, keep) or _covered(f, claimed)):
                fs.rm_file(f)
                removed.append(f)
        if layout.is_remote(root):
            continue  # object stores have no empty folders
        for d in sorted(dirs, key=len, reverse=True):
            in_use = _covered(d, keep) or _covered(d, claimed) or any(c.startswith(d + "/") for c in claimed)
            if not in_use:
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # only if empty
                    removed.append(d)
    return removed
