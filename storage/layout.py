"""Where things live under $ATLAS_HOME, and how files get there atomically.

$ATLAS_HOME (default ./data) may be a local folder or an fsspec URL (s3://bucket/atlas, gs://...). The DuckDB
file itself must be local (DuckDB needs a real file lock); large tensors may live anywhere fsspec reaches.

    $ATLAS_HOME/
      atlas.duckdb                         the working copy of the feature database; only writers open it
      atlas.duckdb.lock                    the writer lock (storage.db)
      snapshots/atlas-000042.duckdb        published read-only copies (current + previous), for readers
      snapshots/atlas-current.duckdb       symlink to the current snapshot (point raw DuckDB users here)
      claims/                              locks on files being written (storage.artifacts)
      models/<model>/                      converted HF checkpoint of the embedded default
      corpora/<name>/                      fetched public-domain text
      activations/<model>/L<layer>/<split>/<run>/shard-00000.parquet   (one folder per harvest run)
      transcoders/<transcoder_id>/<version>/   cfg.json + sae_weights.safetensors (SAELens layout), one folder
                                           per save, so a new save never overwrites the files rows point to
      checkpoints/<transcoder_id>/         resumable training state
      exports/                             Neuronpedia / circuit-tracer JSON

Files under the managed roots (activations/, transcoders/) belong to the database: once no table row of the
working copy or of a kept snapshot points to them (and no running writer claims them), `storage.db.publishing`
deletes them. Put nothing else there.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def atlas_home() -> str:
    """Root of all artifacts: $ATLAS_HOME or ./data."""
    return os.environ.get("ATLAS_HOME", "data").rstrip("/")


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def join(*parts: str | int) -> str:
    return "/".join(str(p).strip("/") if i else str(p).rstrip("/") for i, p in enumerate(parts))


def safe_name(name: str) -> str:
    """A model or dataset name as one path component ('HuggingFaceTB/SmolLM2' -> 'HuggingFaceTB__SmolLM2')."""
    return _SAFE_NAME.sub("_", name.replace("/", "__"))


def db_path() -> str:
    home = atlas_home()
    if is_remote(home):
        return os.environ.get("ATLAS_DB", "atlas.duckdb")
    return os.environ.get("ATLAS_DB", join(home, "atlas.duckdb"))


def models_dir() -> str:
    return join(atlas_home(), "models")


def corpora_dir() -> str:
    return os.environ.get("ATLAS_CORPORA", join(atlas_home(), "corpora"))


def activation_shard_path(model: str, layer: int, split: str, run: str, shard: int) -> str:
    return join(activation_dir(model, layer, split), run, f"shard-{shard:05d}.parquet")


def activation_dir(model: str, layer: int, split: str) -> str:
    return join(atlas_home(), "activations", safe_name(model), f"L{layer}", split)


def transcoder_dir(transcoder_id: str) -> str:
    return join(atlas_home(), "transcoders", safe_name(transcoder_id))


def new_version(path: str) -> str:
    """A fresh folder under `path` for one save (UTC time + random suffix, so versions sort by time)."""
    return join(path, time.strftime("v%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8])


def managed_roots() -> list[str]:
    """Folders whose files exist only because a table row points to them (storage.artifacts sweeps them)."""
    return [join(atlas_home(), "transcoders"), join(atlas_home(), "activations")]


def checkpoint_dir(transcoder_id: str) -> str:
    return join(atlas_home(), "checkpoints", safe_name(transcoder_id))


def exports_dir() -> str:
    return join(atlas_home(), "exports")


def fs_for(path: str) -> fsspec.AbstractFileSystem:
    return fsspec.core.url_to_fs(path)[0]


def remove_tree(path: str) -> None:
    fs = fs_for(path)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@contextlib.contextmanager
def atomic_local_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    For remote URLs the block writes a local temp file which is uploaded once complete (object stores publish
    a key only when its upload finishes, so readers never see half a file either way).
    """
    if is_remote(path):
        fd, tmp = tempfile.mkstemp(suffix=Path(path).suffix)
        os.close(fd)
        try:
            yield tmp
            fs_for(path).put_file(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temporary local directory that replaces `path` as a whole when the block succeeds."""
    if is_remote(path):
        with tempfile.TemporaryDirectory() as tmp:
            yield tmp
            remove_tree(path)
            fs_for(path).put(tmp + "/", path, recursive=True)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield str(tmp)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        if old.exists():
            remove_tree(str(old))
    finally:
        if tmp.exists():
            remove_tree(str(tmp))


def local_copy(path: str) -> str:
    """A local filename for `path` (downloaded to a cache when remote)."""
    if not is_remote(path):
        return path
    return fsspec.open_local(f"simplecache::{path}")
