"""Activation shards: Parquet files of (context_id, position, x, y) per (model, layer, split), plus the manifest.

x and y are stored as float16 fixed-size lists (`Array(Float16, d_model)` in polars/DuckDB terms); fp16 halves
disk and I/O against fp32 and keeps ~3 significant digits, well below transcoder reconstruction error. Shards are
written atomically (temp name, then rename) into a fresh run folder that the ShardWriter claims
(storage.artifacts) until `record_manifest` commits the manifest rows of its (model, layer, split) in one
transaction, after all its shards exist; so a failed harvest never leaves a manifest pointing at missing files,
and the previous run's shards are deleted by the sweep only once no kept snapshot lists them.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from storage import artifacts, layout
from storage.db import readers, row_writes

STORAGE_DTYPE = "float16"


@dataclass(frozen=True)
class Shard:
    path: str
    n_tokens: int
    first_context_id: int
    last_context_id: int


def write_shard(
    path: str,
    context_id: np.ndarray,  # [n] int32
    position: np.ndarray,  # [n] int16
    x: torch.Tensor,  # [n, d_model]
    y: torch.Tensor,  # [n, d_model]
) -> Shard:
    d = x.shape[-1]

    def col(t: torch.Tensor) -> pa.FixedSizeListArray:
        flat = t.detach().to("cpu", torch.float16).contiguous().numpy().reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), d)

    table = pa.table(
        {
            "context_id": pa.array(context_id.astype(np.int32)),
            "position": pa.array(position.astype(np.int16)),
            "x": col(x),
            "y": col(y),
        }
    )
    with layout.atomic_local_path(path) as tmp:
        # No dictionary pages or min/max statistics for x and y: neither helps near-random fp16 values, and
        # building them dominated the write (`python -m bench harvest`: ratio 0.65-0.69 with them).
        pq.write_table(
            table, tmp, compression="lz4", use_dictionary=False, write_statistics=["context_id", "position"]
        )
    return Shard(path, len(context_id), int(context_id.min()), int(context_id.max()))


class ShardWriter:
    """Accumulates harvested rows per layer and writes full shards on a background thread."""

    def __init__(self, model: str, layers: list[int], split: str, run: str, shard_tokens: int):
        self.model, self.split, self.run, self.shard_tokens = model, split, run, shard_tokens
        self.pending: dict[int, list] = {layer: [] for layer in layers}
        self.futures: dict[int, list[Future]] = {layer: [] for layer in layers}
        self.pool = ThreadPoolExecutor(max_workers=1)
        for layer in layers:  # no sweep may delete the run's shards before their manifest commits
            artifacts.claim(run_dir(model, layer, split, run))

    def add(self, layer: int, context_id, position, x, y) -> None:
        self.pending[layer].append((context_id, position, x, y))
        if sum(len(p[0]) for p in self.pending[layer]) >= self.shard_tokens:
            self._flush(layer)

    def _flush(self, layer: int) -> None:
        parts, self.pending[layer] = self.pending[layer], []
        if not parts:
            return
        cid, pos, x, y = (torch.cat([p[i] for p in parts]) for i in range(4))
        path = layout.activation_shard_path(self.model, layer, self.split, self.run, len(self.futures[layer]))
        self.futures[layer].append(self.pool.submit(write_shard, path, cid.numpy(), pos.numpy(), x, y))

    def finish(self) -> dict[int, list[Shard]]:
        for layer in self.pending:
            self._flush(layer)
        self.pool.shutdown(wait=True)
        return {layer: [f.result() for f in futs] for layer, futs in self.futures.items()}


def run_dir(model: str, layer: int, split: str, run: str) -> str:
    """The folder of one harvest run's shards for (model, layer, split)."""
    return layout.join(layout.activation_dir(model, layer, split), run)


def read_shard(path: str, columns: tuple[str, ...] = ("x", "y"), dtype: torch.dtype = torch.float32):
    """Tensors of one shard: dict column -> [n, d_model] for x/y, [n] for context_id/position."""
    try:
        table = pq.read_table(layout.local_copy(path), columns=list(columns))
    except (OSError, pa.ArrowInvalid) as e:
        raise OSError(
            f"Activation shard {path} is missing or corrupt ({e}); re-materialize `activations`."
        ) from e
    out = {}
    for name in columns:
        column = table.column(name).combine_chunks()
        if isinstance(column.type, pa.FixedSizeListType):
            d = column.type.list_size
            arr = column.values.to_numpy(zero_copy_only=False).reshape(-1, d)
            out[name] = torch.from_numpy(arr).to(dtype)
        else:
            out[name] = torch.from_numpy(column.to_numpy().astype(np.int64))
    return out


def record_manifest(model: str, layer: int, split: str, shards: list[Shard], meta: dict) -> None:
    """Replace the manifest rows of (model, layer, split) with `shards`; meta holds hook_in, hook_out, d_model."""
    rows = pl.DataFrame(
        {
            "model": model,
            "layer": layer,
            "split": split,
            "shard": list(range(len(shards))),
            "path": [s.path for s in shards],
            "n_tokens": [s.n_tokens for s in shards],
            "first_context_id": [s.first_context_id for s in shards],
            "last_context_id": [s.last_context_id for s in shards],
            "hook_in": meta["hook_in"],
            "hook_out": meta["hook_out"],
            "d_model": meta["d_model"],
            "dtype": STORAGE_DTYPE,
        },
        schema_overrides={"n_tokens": pl.Int64, "layer": pl.Int32, "shard": pl.Int32},
    ).with_columns(created_at=row_writes.now())
    row_writes.write("activation_shards", rows, {"model": model, "layer": layer, "split": split})
    for folder in {s.path.rsplit("/", 1)[0] for s in shards}:
        artifacts.release(folder)  # its rows are committed: the manifest now keeps it


def clear_manifest(model: str, layer: int, split: str) -> None:
    """Forget the shards of (model, layer, split) (their files are removed by the activations asset)."""
    row_writes.write("activation_shards", pl.DataFrame(), {"model": model, "layer": layer, "split": split})


def shard_paths(model: str, layer: int, split: str) -> list[str]:
    """Manifest paths of the shards for (model, layer, split), in order; a clear error if none exist."""
    frame = readers.query(
        "SELECT path FROM activation_shards WHERE model = ? AND layer = ? AND split = ? ORDER BY shard",
        [model, layer, split],
    )
    if frame.height == 0:
        raise LookupError(
            f"No {split} activations for model {model!r} layer {layer}; materialize `activations` for that layer."
        )
    return frame["path"].to_list()


def iter_shards(model: str, layer: int, split: str, columns: tuple[str, ...] = ("x", "y")) -> Iterator[dict]:
    for path in shard_paths(model, layer, split):
        yield read_shard(path, columns)
