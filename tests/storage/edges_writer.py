"""A long write for the concurrent-read test: 1.77M `feature_edges` rows, enough for page loads to run inside it.

    python -m tests.storage.edges_writer MODEL STOP_FILE BUSY_FILE N_WRITES

Writes the rows through storage.circuits.write_feature_edges (the asset's own call) into the fixture atlas's two
transcoders N_WRITES times (each replaces the last, as a re-materialization does) or until STOP_FILE
exists; BUSY_FILE exists while a write unit holds the writer lock. Readers read a published snapshot, so the size
only has to make each write outlast several page loads; it is not the default build's largest write, which is
larger and makes the writer slower, not the readers.
Prints one line per write: rows, seconds in the transaction, seconds to publish, snapshot size.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from storage import circuits
from storage.db import publishing, readers

N_FEATURES, N_VIA, K = 1152, 24, 32  # per transcoder: 1152 x 24 routes x top-32 = 884,736 rows; x 2 = 1.77M


def edge_frames(ids: list[str], seed: int) -> list[pl.DataFrame]:
    rng = np.random.default_rng(seed)
    vias = ["resid"] + [f"attn.{i // 9}.{i % 9}" for i in range(N_VIA - 1)]
    frames = []
    for dst, src in ((ids[1], ids[0]), (ids[0], ids[1])):
        n = N_FEATURES * N_VIA * K
        dst_f, via_i, rank = np.meshgrid(np.arange(N_FEATURES), np.arange(N_VIA), np.arange(K), indexing="ij")
        shift = rng.integers(0, N_FEATURES)  # distinct sources per (dst feature, via), so the key holds
        src_features = (
            ((dst_f * 7 + via_i * 17 + rank * 131 + shift) % N_FEATURES).reshape(-1).astype(np.int32)
        )
        frames.append(
            pl.DataFrame(
                {
                    "src_transcoder_id": pl.Series([src]).extend_constant(src, n - 1),
                    "src_feature": src_features,
                    "dst_transcoder_id": pl.Series([dst]).extend_constant(dst, n - 1),
                    "dst_feature": np.repeat(np.arange(N_FEATURES, dtype=np.int32), N_VIA * K),
                    "via": np.tile(np.repeat(np.array(vias), K), N_FEATURES),
                    "weight": rng.standard_normal(n, dtype=np.float32),
                    "rank": np.tile(np.arange(K, dtype=np.int32), N_FEATURES * N_VIA),
                }
            )
        )
    return frames


def main(model: str, stop: Path, busy: Path, n_writes: int) -> None:
    ids = readers.query("SELECT transcoder_id FROM transcoders WHERE model = ? ORDER BY layer", [model])
    ids = ids["transcoder_id"].to_list()
    base = edge_frames(ids, seed=0)  # built once: the harness should not compete with the pages it times
    for i in range(n_writes):
        if stop.exists():
            return
        frames = [f.with_columns(weight=f["weight"] * (i + 1)) for f in base]  # new values, same keys
        busy.touch()
        t0 = time.perf_counter()
        with publishing.deferred():  # publish timed on its own below; the same code a plain write runs
            n = circuits.write_feature_edges(model, frames, ids)
            t1 = time.perf_counter()
        snap = readers.published_path()
        t2 = time.perf_counter()
        busy.unlink()
        print(
            f"write {i}: {n:,} rows, transaction {t1 - t0:.1f} s, publish {t2 - t1:.2f} s, "
            f"snapshot {snap.stat().st_size / 2**20:.0f} MB",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
