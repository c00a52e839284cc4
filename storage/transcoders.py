"""Trained transcoders: weights on disk (SAELens layout) plus rows in `transcoders`, `training_curves` and
`transcoder_metrics`, written together.

`save_transcoder` is one write unit (storage.db): it writes the weights to a fresh, claimed folder
`layout.new_version(layout.transcoder_dir(id))`, then replaces the three tables' rows for that id in one
transaction whose `weights_path` points to the new folder, then publishes; the previous folder is deleted by the
sweep once no kept snapshot points to it. A failure or a kill at any point leaves readers either the previous
transcoder or the new one, never a mix. The quality-gate verdict lives in `transcoder_metrics.gate_passed /
gate_reason`; `gate_status` reads it for downstream assets.

Versions: a transcoder id ends in a short hash of everything that determines its weights (training config, layer,
data sample), so re-training with another k, skip setting, budget or seed adds a version beside the old one
instead of overwriting it. `current_transcoders` says which version each layer serves; `list_transcoders` (what
every downstream asset and the app read) follows it, and `set_current` points a layer at another version.

Keep training: a version's folder also holds `train_state.safetensors` (interp.train.TrainState: the optimiser
state a continued run resumes from, and the ids of the training contexts its weights have seen), read back by
`load_train_state`. A continued version is a new id whose `config` JSON names its parent (`continue_from`); the
parent's rows and folder stay as they are.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from typing import Any

import polars as pl

from interp.train import STATE_FILE, TrainState
from interp.transcoder import Transcoder
from storage import artifacts, layout
from storage.db import crash_points, readers, row_writes

METRIC_COLUMNS = (
    "n_eval_tokens",
    "n_ce_tokens",
    "l0",
    "fvu",
    "fvu_typical",
    "massive_frac",
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
    "goal_misses",
    "n_eval_contexts",
    "ce_recovered_lo",
    "ce_recovered_hi",
    "delta_ce_lo",
    "delta_ce_hi",
)
_NON_REAL = ("n_eval_tokens", "n_ce_tokens", "gate_passed", "gate_reason", "goal_misses", "n_eval_contexts")
CURVE_COLUMNS = ("step", "tokens", "loss", "mse", "sparsity_loss", "l0", "fvu", "dead_frac", "lr")


def version_hash(recipe: Mapping[str, Any]) -> str:
    """8 hex digits identifying a training recipe (config and data); key order does not matter."""
    blob = json.dumps(recipe, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def transcoder_id(
    model: str, layer: int, architecture: str, d_sae: int, recipe: Mapping[str, Any] | None = None
) -> str:
    """'<model>/L<layer>/<architecture>-<d_sae>-<version>', e.g. 'smollm2-135m/L8/topk-4608-1a2b3c4d', the
    version hashing the training recipe; without a recipe (an imported or hand-made transcoder) no version."""
    base = f"{model}/L{layer}/{architecture}-{d_sae}"
    return base if recipe is None else f"{base}-{version_hash(recipe)}"


def save_transcoder(
    tc: Transcoder,
    transcoder_id: str,
    config: dict[str, Any],
    train_tokens: int,
    curve: pl.DataFrame,
    metrics: dict[str, Any],
    make_current: bool = False,
    state: TrainState | None = None,
) -> str:
    """Write the weights and the three tables' rows for `transcoder_id`; returns the weights directory.

    `curve` has columns among CURVE_COLUMNS; `metrics` keys among METRIC_COLUMNS (plus optional 'thresholds').
    make_current: the same transaction makes it the version its layer serves (`current_transcoders`).
    state: the training state to keep beside the weights, so that the version can be trained further.
    """
    path = artifacts.claim(layout.new_version(layout.transcoder_dir(transcoder_id)))
    try:
        _write_weights(tc, path, state)
        crash_points.crash_point("files_written")
        _record(tc, transcoder_id, path, config, train_tokens, curve, metrics, make_current)
    finally:
        artifacts.release(path)  # if no row points to it (a failure), the next publish's sweep deletes it
    return path


def _write_weights(tc: Transcoder, path: str, state: TrainState | None = None) -> None:
    if not layout.is_remote(path):
        tc.save(path)
        if state is not None:
            state.save(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tc.save(tmp)
        if state is not None:
            state.save(tmp)
        layout.fs_for(path).put(tmp + "/", path, recursive=True)


def _record(
    tc: Transcoder,
    transcoder_id: str,
    path: str,
    config: dict[str, Any],
    train_tokens: int,
    curve: pl.DataFrame,
    metrics: dict[str, Any],
    make_current: bool,
) -> None:
    """Replace the three tables' rows of `transcoder_id` (and, make_current, its layer's `current_transcoders` row)
    in one transaction (weights already at `path`)."""
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
    ).with_columns(created_at=row_writes.now())
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
            "n_eval_contexts": pl.Int32,
            "gate_passed": pl.Boolean,
            "gate_reason": pl.Utf8,
            "goal_misses": pl.Utf8,
            **{k: pl.Float64 for k in METRIC_COLUMNS if k not in _NON_REAL},
        },
    ).with_columns(created_at=row_writes.now())
    curve = curve.select([c for c in CURVE_COLUMNS if c in curve.columns]).with_columns(
        transcoder_id=pl.lit(transcoder_id)
    )
    writes = [
        ("transcoders", row, {"transcoder_id": transcoder_id}),
        ("training_curves", curve, {"transcoder_id": transcoder_id}),
        ("transcoder_metrics", metric_row, {"transcoder_id": transcoder_id}),
    ]
    if make_current:
        writes.append(_current_write(cfg.model_name, cfg.layer, transcoder_id))
    row_writes.write_many(writes)


def _current_write(model: str, layer: int, transcoder_id: str) -> tuple[str, pl.DataFrame, dict]:
    frame = pl.DataFrame(
        {"model": [model], "layer": [layer], "transcoder_id": [transcoder_id]},
        schema_overrides={"layer": pl.Int32},
    ).with_columns(chosen_at=row_writes.now())
    return "current_transcoders", frame, {"model": model, "layer": layer}


def set_current(model: str, layer: int, transcoder_id: str) -> None:
    """Make `transcoder_id` the version that layer `layer` of `model` serves."""
    row = transcoder_row(transcoder_id)
    if row["model"] != model or row["layer"] != layer:
        raise ValueError(
            f"Transcoder {transcoder_id!r} imitates {row['model']} layer {row['layer']}, not {model} layer {layer}."
        )
    row_writes.write_many([_current_write(model, layer, transcoder_id)])


# The version each (model, layer) serves: its `current_transcoders` row, else its newest transcoder.
CURRENT_IDS_SQL = """
    SELECT transcoder_id FROM (
      SELECT t.transcoder_id,
             coalesce(c.transcoder_id = t.transcoder_id,
                      row_number() OVER (PARTITION BY t.model, t.layer
                                         ORDER BY t.created_at DESC, t.transcoder_id) = 1) AS is_current
      FROM transcoders t LEFT JOIN current_transcoders c ON c.model = t.model AND c.layer = t.layer
    ) WHERE is_current"""


def list_transcoders(model: str, versions: bool = False) -> pl.DataFrame:
    """The current transcoder of each layer of `model` with its metrics, one row per layer ordered by layer (a
    layer with no `current_transcoders` row serves its newest version). versions=True: every version, with an
    `is_current` column."""
    return readers.query(
        f"""
        SELECT t.*, m.* EXCLUDE (transcoder_id, created_at),
               t.transcoder_id IN ({CURRENT_IDS_SQL}) AS is_current
        FROM transcoders t LEFT JOIN transcoder_metrics m USING (transcoder_id)
        WHERE t.model = ? {"" if versions else f"AND t.transcoder_id IN ({CURRENT_IDS_SQL})"}
        ORDER BY t.layer, t.created_at DESC
        """,
        [model],
    )


def transcoder_row(transcoder_id: str) -> dict[str, Any]:
    """The `transcoders` row of `transcoder_id` (config parsed); a clear error when it does not exist."""
    frame = readers.query("SELECT * FROM transcoders WHERE transcoder_id = ?", [transcoder_id])
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


def load_train_state(transcoder_id: str) -> TrainState:
    """The training state saved with `transcoder_id` (what a continued run resumes from); a clear error when the
    version has none (saved before states were kept, or not trained by the `transcoders` asset)."""
    path = transcoder_row(transcoder_id)["weights_path"]
    fs, file = layout.fs_for(path), layout.join(path, STATE_FILE)
    if not fs.exists(file):
        raise LookupError(
            f"Transcoder {transcoder_id!r} has no saved training state ({file}), so it cannot be trained further; "
            "train that layer from scratch (continue_from: '') and continue the new version."
        )
    if not layout.is_remote(path):
        return TrainState.load(path)
    with tempfile.TemporaryDirectory() as tmp:
        fs.get(file, f"{tmp}/{STATE_FILE}")
        return TrainState.load(tmp)


def gate_status(transcoder_id: str) -> tuple[bool, str]:
    """(passed, reason) of the quality gate recorded when `transcoder_id` was evaluated."""
    frame = readers.query(
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
    ).with_columns(created_at=row_writes.now())
    row_writes.write("splice_metrics", row, {"model": model})


def splice_metrics(model: str) -> pl.DataFrame:
    return readers.query("SELECT * FROM splice_metrics WHERE model = ? ORDER BY created_at DESC", [model])
