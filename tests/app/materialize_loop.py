"""A writer for the concurrency test: materializes a cheap Dagster asset into the atlas database in a loop.

    python -m tests.app.materialize_loop STOP_FILE COUNT_FILE

Each run replaces 20,000 `vocab` rows of model 'writer' through storage.db (delete-then-insert in one
transaction), like every real asset; the number of finished materializations goes to COUNT_FILE.
"""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg
import polars as pl

from storage.db import row_writes

N_ROWS = 20_000


@dg.asset
def writer_vocab() -> dg.MaterializeResult:
    rows = pl.DataFrame(
        {
            "model": ["writer"] * N_ROWS,
            "token_id": range(N_ROWS),
            "token_str": [f"t{i}" for i in range(N_ROWS)],
        }
    )
    return dg.MaterializeResult(metadata={"rows": row_writes.write("vocab", rows, {"model": "writer"})})


def main(stop: Path, count: Path, max_runs: int = 200) -> None:
    for i in range(1, max_runs + 1):
        if stop.exists():
            return
        assert dg.materialize([writer_vocab], raise_on_error=True).success
        count.write_text(str(i))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
