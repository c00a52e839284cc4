"""The mean-ablation baselines of per-layer evaluation, cached in `ablation_baselines`.

The loss with a layer's MLP output mean-ablated depends on the model, the layer, the ablation mean and the
evaluation sample, not on the transcoder being evaluated: it is computed once per (model, layer, mean, sample)
and reused by every later evaluation of another transcoder version of that layer on that sample
(interp.evals.evaluate_each(ablated=...)). The key hashes all of it, the sample's tokens included, so a changed
sample, mean or precision is a cache miss, never a stale hit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
import torch

from storage.db import readers, row_writes


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def baseline_key(
    model: str,
    layer: int,
    mean: torch.Tensor,  # [d_out] the ablation mean
    context_ids: list[int] | torch.Tensor,  # the sample, in evaluation order
    tokens: torch.Tensor,  # [n_ctx, ctx_len] its tokens
    how: Mapping[str, Any] | None = None,  # how the passes ran (precision, batch size)
) -> str:
    """16 hex digits naming one baseline: model, layer, the mean's float32 values, the sample and `how`."""
    blob = {
        "model": model,
        "layer": int(layer),
        "mean": _digest(mean.float()),
        "context_ids": [int(i) for i in context_ids],
        "tokens": _digest(tokens.long()),
        "how": dict(how or {}),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def read(keys: Mapping[int, str]) -> dict[int, torch.Tensor]:
    """{layer: per-context ablated losses [n_ctx] float64} of the layers whose key is cached (others absent)."""
    if not keys:
        return {}
    frame = readers.query(
        "SELECT baseline_key, ablated_per_context FROM ablation_baselines "
        "WHERE baseline_key IN (SELECT unnest(?))",
        [list(keys.values())],
    )
    found = dict(zip(frame["baseline_key"].to_list(), frame["ablated_per_context"].to_list()))
    return {
        layer: torch.tensor(found[key], dtype=torch.float64) for layer, key in keys.items() if key in found
    }


def write(model: str, baselines: Mapping[int, tuple[str, torch.Tensor]], n_tokens_per_context: int) -> None:
    """Store {layer: (key, per-context ablated losses [n_ctx])} of `model` (one write unit; replaces same keys)."""
    if not baselines:
        return
    rows = []
    for layer, (key, losses) in baselines.items():
        values = np.asarray(losses, dtype=np.float64).reshape(-1)
        n_tokens = values.size * n_tokens_per_context
        rows.append(
            {
                "baseline_key": key,
                "model": model,
                "layer": int(layer),
                "n_contexts": values.size,
                "n_ce_tokens": n_tokens,
                "ce_ablated": float(values.sum() / n_tokens),
                "ablated_per_context": values.tolist(),
            }
        )
    # the table's scalar columns as storage/schema.py declares them, and its one list column
    schema = row_writes.polars_schema("ablation_baselines") | {"ablated_per_context": pl.List(pl.Float64)}
    frame = pl.DataFrame(rows, schema={k: v for k, v in schema.items() if k != "created_at"}).with_columns(
        created_at=row_writes.now()
    )
    row_writes.write("ablation_baselines", frame, {"baseline_key": frame["baseline_key"].to_list()})
