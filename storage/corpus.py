"""Read/write the `contexts` and `vocab` tables."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import polars as pl
import torch

from interp.sampling import stratified_sample
from storage.db import readers, row_writes, working_copy


def write_contexts(rows: pl.DataFrame) -> int:
    """Replace all contexts (they are a function of corpus + tokenizer, so the table is rebuilt whole)."""
    with working_copy.transaction() as con:
        con.execute("DELETE FROM contexts")
        row_writes.replace_rows(con, "contexts", rows, {})
    return rows.height


def write_vocab(model: str, token_strs: list[str]) -> int:
    rows = pl.DataFrame(
        {"model": model, "token_id": np.arange(len(token_strs), dtype=np.int32), "token_str": token_strs}
    )
    return row_writes.write("vocab", rows, {"model": model})


def load_contexts(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n_ctx, ctx_len] int64, context_ids [n_ctx] int64): every context of a split, in context_id order."""
    frame = readers.query(
        "SELECT context_id, tokens FROM contexts WHERE split = ? ORDER BY context_id", [split]
    )
    if frame.height == 0:
        raise LookupError(
            f"No {split!r} contexts in the atlas database; materialize the `contexts` asset first."
        )
    tokens = torch.tensor(frame["tokens"].to_list(), dtype=torch.long)
    return tokens, torch.tensor(frame["context_id"].to_numpy(), dtype=torch.long)


def context_length() -> int:
    """Tokens per context (BOS included)."""
    frame = readers.query("SELECT len(tokens) AS n FROM contexts LIMIT 1")
    if frame.height == 0:
        raise LookupError("No contexts in the atlas database; materialize the `contexts` asset first.")
    return int(frame["n"][0])


def sample_context_ids(split: str, n: int, seed: int, exclude: Collection[int] = ()) -> list[int]:
    """A seeded sample of n context ids of a split, stratified by corpus in the proportions of the whole corpus
    (interp.sampling), in random order. `exclude`: ids not to draw (those a transcoder was trained on already)."""
    frame = readers.query(
        "SELECT context_id, coalesce(corpus, '') AS corpus FROM contexts WHERE split = ? ORDER BY context_id",
        [split],
    )
    if frame.height == 0:
        raise LookupError(
            f"No {split!r} contexts in the atlas database; materialize the `contexts` asset first."
        )
    if exclude:
        held = frame.height
        frame = frame.filter(~pl.col("context_id").is_in(list(exclude)))
        if n > frame.height:
            raise ValueError(
                f"Asked for {n} {split!r} contexts not seen before, but {held - frame.height} of the split's "
                f"{held} have been seen: {frame.height} are left. Ask for fewer tokens, or give the corpus more text."
            )
    if n > frame.height:
        raise ValueError(
            f"Asked for {n} {split!r} contexts but the split holds {frame.height}; lower the count, or give the "
            "corpus more text (or another eval_fraction) and re-materialize `contexts`."
        )
    whole = readers.query("SELECT coalesce(corpus, '') AS corpus, count(*) AS n FROM contexts GROUP BY 1")
    weights = dict(zip(whole["corpus"].to_list(), whole["n"].to_list()))  # the corpus' mix, not the split's
    picked = stratified_sample(frame["corpus"].to_list(), n, seed, weights)
    return frame["context_id"].to_numpy()[picked].tolist()


def sample_contexts(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, ctx_len] int64, context_ids [n] int64) of `sample_context_ids(split, n, seed)`."""
    ids = sample_context_ids(split, n, seed)
    return contexts_by_id(ids), torch.tensor(ids, dtype=torch.long)


def corpus_shares(split: str | None = None) -> dict[str, float]:
    """Each corpus' share of the contexts (of one split, or all)."""
    sql = "SELECT coalesce(corpus, '') AS corpus, count(*) AS n FROM contexts"
    frame = readers.query(
        sql + (" WHERE split = ?" if split else "") + " GROUP BY 1", [split] if split else None
    )
    total = frame["n"].sum()
    return {c: n / total for c, n in frame.iter_rows()}


def contexts_by_id(context_ids: list[int]) -> torch.Tensor:
    """Token rows [len(context_ids), ctx_len] for the given ids, in the given order."""
    frame = readers.query(
        "SELECT context_id, tokens FROM contexts WHERE context_id IN (SELECT unnest(?))", [list(context_ids)]
    )
    by_id = dict(zip(frame["context_id"].to_list(), frame["tokens"].to_list()))
    missing = [c for c in context_ids if c not in by_id]
    if missing:
        raise LookupError(f"Contexts {missing[:5]} are not in the database; re-materialize `contexts`.")
    return torch.tensor([by_id[c] for c in context_ids], dtype=torch.long)


def token_strings(model: str) -> list[str]:
    frame = readers.query("SELECT token_str FROM vocab WHERE model = ? ORDER BY token_id", [model])
    return frame["token_str"].to_list()
