"""Trained transcoders: weights on disk (SAELens layout) plus rows in `transcoders`, `training_curves` and
`transcoder_metrics`, written together.

`save_transcoder` is one write unit (storage.db): it writes the weights to a fresh, claimed folder
`layout.new_version(layout.transcoder_dir(id))`, then replaces the three tables' rows for that id in one
transaction whose `weights_path` points to the new folder, then publishes; the previous folder is deleted by the
sweep once no kept snapshot points to it. A failure or a kill at any point leaves readers either the previous
transcoder or the new one, never a mix. The quality-gate verdict lives in `transcoder_metrics.gate_passed /
gate_reason`; `gate_status` reads it for downstream assets.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

import polars as pl

from interp.transcoder import Transcoder
from storage import artifacts, db, layout

METRIC_COLUMNS = (
    "n_eval_tokens",
    "n_ce_tokens",
    "l0",
    "fvu",
    "mse",
    "ce_clean",
    "ce_spliced",
    "ce_ablated",
    "ce_zero_ablated",
    "ce_recovered",
    "kl",
    "dead_frac",
    "dense_frac",
    "gate_passed",
    "gate_reason",
)
_NON_REAL = ("n_eval_tokens", "n_ce_tokens", "gate_passed", "gate_reason")
CURVE_COLUMNS = ("step", "tokens", "loss", "mse", "sparsity_loss", "l0", "fvu", "dead_frac", "lr")


def transcoder_id(model: str, layer: int, architecture: str, d_sae: int) -> str:
    """'<model>/L<layer>/<architecture>-<d_sae>', e.g. 'smollm2-135m/L8/topk-4608'."""
    return f"{model}/L{layer}/{architecture}-{d_sae}"


def save_transcoder(
    tc: Transcoder,
    transcoder_id: str,
    config: dict[str, Any],
    train_tokens: int,
    curve: pl.DataFrame,
    metrics: dict[str, Any],
) -> str:
    """Write the weights and the three tables' rows for `transcoder_id`; returns the weights directory.

    `curve` has columns among CURVE_COLUMNS; `metrics` keys among METRIC_COLUMNS (plus optional 'thresholds').
    """
    path = artifacts.claim(layout.new_version(layout.transcoder_dir(transcoder_id)))
    try:
        _write_weights(tc, path)
        db.crash_point("files_written")
        _record(tc, transcoder_id, path, config, train_tokens, curve, metrics)
    finally:
        artifacts.release(path)  # if no row points to it (a failure), the next publish's sweep deletes it
    return path


def _write_weights(tc: Transcoder, path: str) -> None:
    if not layout.is_remote(path):
        tc.save(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tc.save(tmp)
        layout.fs_for(path).put(tmp + "/", path, recursive=True)


def _record(
    tc: Transcoder,
    transcoder_id: str,
    path: str,
    config: dict[str, Any],
    train_tokens: int,
    curve: pl.DataFrame,
    metrics: dict[str, Any],
) -> None:
    """Replace the three tables' rows of `transcoder_id` in one transaction (weights already at `path`)."""
    cfg = tc.cfg
    row = pl.DataFrame(
        {
            "transcoder_id": [transcoder_id],
            "model": [cfg.model_name],
            "layer": [cfg.layer],
            "architecture": [cfg.architecture],
            "d_in": [cfg.d_in],
            "d_sae": [cfg.d_sae],
            "train_tokens": [int(train_tokens)],
            "weights_path": [path],
            "config": [json.dumps(config, default=str)],
        },
        schema_overrides={"train_tokens": pl.Int64, "layer": pl.Int32, "d_in": pl.Int32, "d_sae": pl.Int32},
    ).with_columns(created_at=db.now())
    unknown = set(metrics) - set(METRIC_COLUMNS) - {"thresholds"}
    if unknown:
        raise ValueError(f"Unknown metric(s) {sorted(unknown)}; transcoder_metrics has {METRIC_COLUMNS}.")
    m = {k: [metrics.get(k)] for k in METRIC_COLUMNS}
    m["thresholds"] = [json.dumps(metrics.get("thresholds", {}))]
    metric_row = pl.DataFrame(
        {"transcoder_id": [transcoder_id], **m},
        schema_overrides={
            "n_eval_tokens": pl.Int64,
            "n_ce_tokens": pl.Int64,
            "gate_passed": pl.Boolean,
            "gate_reason": pl.Utf8,
            **{k: pl.Float64 for k in METRIC_COLUMNS if k not in _NON_REAL},
        },
    ).with_columns(created_at=db.now())
    curve = curve.select([c for c in CURVE_COLUMNS if c in curve.columns]).with_columns(
        transcoder_id=pl.lit(transcoder_id)
    )
    db.write_many(
        [
            ("transcoders", row, {"transcoder_id": transcoder_id}),
            ("training_curves", curve, {"transcoder_id": transcoder_id}),
            ("transcoder_metrics", metric_row, {"transcoder_id": transcoder_id}),
        ]
    )


def list_transcoders(model: str) -> pl.DataFrame:
    """The latest transcoder of each layer of `model`, with its metrics (one row per layer, ordered by layer)."""
    return db.query(
        """
        SELECT t.*, m.* EXCLUDE (transcoder_id, created_at)
        FROM transcoders t LEFT JOIN transcoder_metrics m USING (transcoder_id)
        WHERE t.model = ?
        QUALIFY row_number() OVER (PARTITION BY t.layer ORDER BY t.created_at DESC, t.transcoder_id) = 1
        ORDER BY t.layer
        """,
        [model],
    )


def transcoder_row(transcoder_id: str) -> dict[str, Any]:
    """The `transcoders` row of `transcoder_id` (config parsed); a clear error when it does not exist."""
    frame = db.query("SELECT * FROM transcoders WHERE transcoder_id = ?", [transcoder_id])
    if frame.height == 0:
        raise LookupError(
            f"No transcoder {transcoder_id!r}; materialize the `transcoders` asset for its layer."
        )
    row = frame.row(0, named=True)
    row["config"] = json.loads(row["config"]) if row["config"] else {}
    return row


def load_transcoder(transcoder_id: str, device: str = "cpu") -> Transcoder:
    """The trained transcoder `transcoder_id` on `device` (TranscoderFileError if its files are missing/corrupt)."""
    path = transcoder_row(transcoder_id)["weights_path"]
    if not layout.is_remote(path):
        return Transcoder.load(path, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        layout.fs_for(path).get(path.rstrip("/") + "/", tmp, recursive=True)
        return Transcoder.load(tmp, device=device)


def gate_status(transcoder_id: str) -> tuple[bool, str]:
    """(passed, reason) of the quality gate recorded when `transcoder_id` was evaluated."""
    frame = db.query(
        "SELECT gate_passed, gate_reason FROM transcoder_metrics WHERE transcoder_id = ?", [transcoder_id]
    )
    if frame.height == 0:
        return False, f"transcoder {transcoder_id!r} has not been evaluated"
    passed, reason = frame.row(0)
    return bool(passed), reason or ""


def write_splice_metrics(
    model: str, layers: list[int], transcoder_ids: list[str], metrics: dict[str, Any]
) -> None:
    """Replace the `splice_metrics` row of (model, layers) with `metrics` (keys: the table's metric columns)."""
    key = ",".join(str(x) for x in sorted(layers))
    cols = ("ce_clean", "ce_spliced", "ce_ablated", "ce_recovered", "kl")
    row = pl.DataFrame(
        {
            "model": [model],
            "layers": [key],
            "transcoder_ids": [list(transcoder_ids)],
            "n_eval_tokens": [metrics["n_ce_tokens"]],
            **{c: [metrics[c]] for c in cols},
        },
        schema_overrides={"n_eval_tokens": pl.Int64, **{c: pl.Float64 for c in cols}},
    ).with_columns(created_at=db.now())
    db.write("splice_metrics", row, {"model": model})


def splice_metrics(model: str) -> pl.DataFrame:
    return db.query("SELECT * FROM splice_metrics WHERE model = ? ORDER BY created_at DESC", [model])
