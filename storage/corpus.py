"""Read/write the `contexts` and `vocab` tables."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from storage import db


def write_contexts(rows: pl.DataFrame) -> int:
    """Replace all contexts (they are a function of corpus + tokenizer, so the table is rebuilt whole)."""
    with db.transaction() as con:
        con.execute("DELETE FROM contexts")
        db.replace_rows(con, "contexts", rows, {})
    return rows.height


def write_vocab(model: str, token_strs: list[str]) -> int:
    rows = pl.DataFrame(
        {"model": model, "token_id": np.arange(len(token_strs), dtype=np.int32), "token_str": token_strs}
    )
    return db.write("vocab", rows, {"model": model})


def load_contexts(split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n_ctx, ctx_len] int64, context_ids [n_ctx] int64) of a split, in context_id order."""
    sql = "SELECT context_id, tokens FROM contexts WHERE split = ? ORDER BY context_id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    frame = db.query(sql, [split])
    if frame.height == 0:
        raise LookupError(
            f"No {split!r} contexts in the atlas database; materialize the `contexts` asset first."
        )
    tokens = torch.tensor(frame["tokens"].to_list(), dtype=torch.long)
    return tokens, torch.tensor(frame["context_id"].to_numpy(), dtype=torch.long)


def contexts_by_id(context_ids: list[int]) -> torch.Tensor:
    """Token rows [len(context_ids), ctx_len] for the given ids, in the given order."""
    frame = db.query(
        "SELECT context_id, tokens FROM contexts WHERE context_id IN (SELECT unnest(?))", [list(context_ids)]
    )
    by_id = dict(zip(frame["context_id"].to_list(), frame["tokens"].to_list()))
    missing = [c for c in context_ids if c not in by_id]
    if missing:
        raise LookupError(f"Contexts {missing[:5]} are not in the database; re-materialize `contexts`.")
    return torch.tensor([by_id[c] for c in context_ids], dtype=torch.long)


def token_strings(model: str) -> list[str]:
    frame = db.query("SELECT token_str FROM vocab WHERE model = ? ORDER BY token_id", [model])
    return frame["token_str"].to_list()
