"""Read/write the feature database tables: `features`, `feature_examples`, `token_features` (one mining run)
and `feature_tokens`, `feature_neighbors` (weight-based views). The only place that turns the miner's and the
token-effect results (interp.features / interp.token_effects / interp.neighbors) into rows.

Every write replaces all rows of one transcoder in one transaction, so re-running is idempotent and a failure
leaves the previous rows. Rows are inserted in feature order, so DuckDB's row-group min/max let a one-feature
read skip the rest of the table. Reads: `feature_card` (everything a card shows, one query), `coverage` (the
asset check).
"""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from interp.features import FeatureStats, display_histogram
from interp.neighbors import Neighbors
from interp.token_effects import TokenEffects
from storage.db import readers, row_writes

MINED_TABLES = ("features", "feature_examples", "token_features")
WEIGHT_TABLES = ("feature_tokens", "feature_neighbors")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _list_column(name: str, values: np.ndarray, lengths: np.ndarray | None = None) -> pl.Series:
    """A polars List column from a 2-D array (or a flat array cut by `lengths`), built through Arrow (fast)."""
    if lengths is None:
        lengths = np.full(len(values), values.shape[1] if values.ndim == 2 else 0)
        values = values.reshape(-1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pl.Series(name, pl.from_arrow(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))))


def feature_rows(
    transcoder_id: str, stats: FeatureStats, labels: list[str], display_bins: int = 40
) -> pl.DataFrame:
    """One `features` row per feature."""
    edges, counts = [], []
    for f in range(len(stats.n_active)):
        e, c = display_histogram(
            stats.hist[f], float(stats.min_act[f]), float(stats.max_act[f]), display_bins
        )
        edges.append(e)
        counts.append(c)
    n_feat = len(stats.n_active)
    return pl.DataFrame(
        {
            "transcoder_id": transcoder_id,
            "feature": np.arange(n_feat, dtype=np.int32),
            "density": _np(stats.density).astype(np.float32),
            "mean_act": _np(stats.mean_act),
            "max_act": _np(stats.max_act),
            "min_act": _np(stats.min_act),
            "n_active": _np(stats.n_active),
            "n_contexts": _np(stats.n_contexts),
            "n_tokens": np.full(n_feat, stats.n_tokens, dtype=np.int64),
            "label": labels,
        }
    ).with_columns(
        _list_column("quantiles", _np(stats.quantiles).astype(np.float32)),
        _list_column("quantile_levels", np.tile(np.asarray(stats.quantile_levels, np.float32), (n_feat, 1))),
        pl.Series("hist_edges", edges, dtype=pl.List(pl.Float32)),
        pl.Series("hist_counts", counts, dtype=pl.List(pl.Int64)),
    )


def example_rows(transcoder_id: str, stats: FeatureStats) -> pl.DataFrame:
    """`feature_examples` rows in feature order, so DuckDB's per-row-group min/max let a card read skip the rest."""
    ex = stats.examples
    return (
        pl.DataFrame(
            {
                "transcoder_id": transcoder_id,
                "feature": _np(ex.feature).astype(np.int32),
                "kind": ex.kind,
                "rank": _np(ex.rank).astype(np.int32),
                "context_id": _np(ex.context_id).astype(np.int32),
                "position": _np(ex.position).astype(np.int32),
                "token_id": _np(ex.token_id).astype(np.int32),
                "activation": _np(ex.activation),
                "window_start": _np(ex.window_start).astype(np.int32),
            }
        )
        .with_columns(_list_column("token_acts", _np(ex.token_acts).astype(np.float32)))
        .sort("feature", "kind", "rank")
    )


def token_index_rows(transcoder_id: str, stats: FeatureStats) -> pl.DataFrame:
    idx = stats.token_index
    return pl.DataFrame(
        {
            "transcoder_id": transcoder_id,
            "token_id": _np(idx["token_id"]).astype(np.int32),
            "rank": _np(idx["rank"]).astype(np.int32),
            "feature": _np(idx["feature"]).astype(np.int32),
            "mean_act": _np(idx["mean_act"]),
            "count": _np(idx["count"]),
        }
    )


def write_mined(
    transcoder_id: str, stats: FeatureStats, labels: list[str], display_bins: int = 40
) -> dict[str, int]:
    """Replace `features`, `feature_examples` and `token_features` of `transcoder_id` (one transaction)."""
    frames = {
        "features": feature_rows(transcoder_id, stats, labels, display_bins),
        "feature_examples": example_rows(transcoder_id, stats),
        "token_features": token_index_rows(transcoder_id, stats),
    }
    row_writes.write_many([(t, f, {"transcoder_id": transcoder_id}) for t, f in frames.items()])
    return {t: f.height for t, f in frames.items()}


def token_effect_rows(transcoder_id: str, effects: dict[str, TokenEffects]) -> pl.DataFrame:
    """`feature_tokens` rows from {kind: TokenEffects} (kinds 'deembed', 'logit_top', 'logit_bottom')."""
    parts = []
    for kind, eff in effects.items():
        n_feat, k = eff.token_id.shape
        parts.append(
            pl.DataFrame(
                {
                    "transcoder_id": transcoder_id,
                    "feature": np.repeat(np.arange(n_feat, dtype=np.int32), k),
                    "kind": kind,
                    "rank": np.tile(np.arange(k, dtype=np.int32), n_feat),
                    "token_id": _np(eff.token_id).reshape(-1).astype(np.int32),
                    "value": _np(eff.value).reshape(-1).astype(np.float32),
                }
            )
        )
    return pl.concat(parts)


def neighbor_rows(transcoder_id: str, nb: Neighbors, bank_ids: list[str]) -> pl.DataFrame:
    n_feat, k = nb.feature.shape
    return pl.DataFrame(
        {
            "transcoder_id": transcoder_id,
            "feature": np.repeat(np.arange(n_feat, dtype=np.int32), k),
            "rank": np.tile(np.arange(k, dtype=np.int32), n_feat),
            "nb_transcoder_id": np.asarray(bank_ids, dtype=object)[_np(nb.bank).reshape(-1)].tolist(),
            "nb_feature": _np(nb.feature).reshape(-1).astype(np.int32),
            "cosine": _np(nb.cosine).reshape(-1).astype(np.float32),
        }
    )


def write_weight_views(
    transcoder_id: str, effects: dict[str, TokenEffects], nb: Neighbors, bank_ids: list[str]
) -> dict[str, int]:
    """Replace `feature_tokens` and `feature_neighbors` of `transcoder_id` (one transaction)."""
    frames = {
        "feature_tokens": token_effect_rows(transcoder_id, effects),
        "feature_neighbors": neighbor_rows(transcoder_id, nb, bank_ids),
    }
    row_writes.write_many([(t, f, {"transcoder_id": transcoder_id}) for t, f in frames.items()])
    return {t: f.height for t, f in frames.items()}


def clear_layer(model: str, layer: int, tables: tuple[str, ...], keep: str | None = None) -> int:
    """Delete the rows of every transcoder of (model, layer) but `keep` from `tables` (the atlas serves one
    version per layer); returns the transcoders cleared."""
    ids = readers.query(
        "SELECT transcoder_id FROM transcoders WHERE model = ? AND layer = ? AND transcoder_id IS DISTINCT FROM ?",
        [model, layer, keep],
    )
    ids = ids["transcoder_id"].to_list()
    if ids and tables:
        row_writes.write_many([(t, pl.DataFrame(), {"transcoder_id": ids}) for t in tables])
    return len(ids)


def coverage(transcoder_id: str, min_examples: int = 20) -> dict[str, int]:
    """Live features and how many of them lack top or band examples.

    k = min(min_examples, top examples kept per feature); a feature is live when it fires in >= k contexts (so
    at least k top examples exist); short_top counts live features with fewer than k, no_band those without any
    band example.
    """
    row = readers.query(
        """
        WITH counts AS (
          SELECT feature, count(*) FILTER (WHERE kind = 'top') AS n_top, count(*) FILTER (WHERE kind <> 'top') AS n_band
          FROM feature_examples WHERE transcoder_id = $tid GROUP BY feature),
        k AS (SELECT least($min, coalesce(max(n_top), 0)) AS k FROM counts)
        SELECT any_value(k.k) AS k, count(f.feature) AS live,
               count(f.feature) FILTER (WHERE coalesce(n_top, 0) < k.k) AS short_top,
               count(f.feature) FILTER (WHERE coalesce(n_band, 0) = 0) AS no_band
        FROM k LEFT JOIN features f ON f.transcoder_id = $tid AND f.n_contexts >= k.k AND k.k > 0
        LEFT JOIN counts USING (feature)""",
        {"tid": transcoder_id, "min": min_examples},
    )
    return row.row(0, named=True)


_CARD_SQL = """
WITH ex AS (
  SELECT e.kind, e.rank, e.context_id, e.position, e.activation, e.window_start, e.token_acts,
         c.tokens[e.window_start + 1 : e.window_start + len(e.token_acts)] AS token_ids
  FROM feature_examples e JOIN contexts c USING (context_id)
  WHERE e.transcoder_id = $tid AND e.feature = $feature)
SELECT
  (SELECT r FROM (SELECT t.model, t.layer, t.architecture, t.d_sae, f.* EXCLUDE (transcoder_id)
                   FROM features f JOIN transcoders t USING (transcoder_id)
                   WHERE f.transcoder_id = $tid AND f.feature = $feature) r) AS stats,
  (SELECT list({kind: kind, rank: rank, context_id: context_id, position: position, activation: activation,
                window_start: window_start, token_acts: token_acts, token_ids: token_ids}) FROM ex) AS examples,
  (SELECT list({kind: kind, rank: rank, token_id: token_id, value: value} ORDER BY kind, rank)
   FROM feature_tokens WHERE transcoder_id = $tid AND feature = $feature) AS effects,
  (SELECT list({transcoder_id: n.nb_transcoder_id, feature: n.nb_feature, layer: t.layer, cosine: n.cosine,
                label: f.label} ORDER BY n.rank)
   FROM feature_neighbors n LEFT JOIN transcoders t ON t.transcoder_id = n.nb_transcoder_id
   LEFT JOIN features f ON f.transcoder_id = n.nb_transcoder_id AND f.feature = n.nb_feature
   WHERE n.transcoder_id = $tid AND n.feature = $feature) AS neighbors
"""

_KIND_ORDER = {"top": (0, 0)}
_VOCAB_CACHE: dict[tuple[str, str], dict[int, str]] = {}


def _token_strings(con, model: str) -> dict[int, str]:
    """Token strings of `model` (a tokenizer's vocabulary never changes under one model name: cached per process
    and database file; a file is known by its inode, since every reader opens a snapshot through its own link)."""
    path = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    try:
        st = os.stat(path[0])
        file = f"{st.st_dev}:{st.st_ino}"
    except (TypeError, OSError):
        file = str(path[0] if path else "")
    key = (file, model)
    if key not in _VOCAB_CACHE:
        rows = con.execute("SELECT token_id, token_str FROM vocab WHERE model = ?", [model]).fetchall()
        while len(_VOCAB_CACHE) >= 8:  # snapshots replace each other: keep the recent ones
            _VOCAB_CACHE.pop(next(iter(_VOCAB_CACHE)))
        _VOCAB_CACHE[key] = dict(rows)
    return _VOCAB_CACHE[key]


def _kind_key(kind: str) -> tuple[int, int]:
    """'top' first, then quantile bands strongest first ('q3' before 'q0')."""
    return _KIND_ORDER.get(kind, (1, -int(kind[1:])) if kind[1:].isdigit() else (2, 0))


def feature_card(transcoder_id: str, feature: int, con=None) -> dict | None:
    """Everything a feature card shows, in ONE query (None if the feature has no `features` row).

    Keys: transcoder_id, feature, stats (features row + model, layer, architecture, d_sae), examples (kind,
    rank, context_id, position, activation, tokens [str], acts [float], highlight = index of the example token in
    tokens; 'top' first, then bands strongest first), token_effects {kind: [(token_str, value)]}, neighbors
    (transcoder_id, feature, layer, cosine, label). Pass an open read-only connection `con` to reuse it.
    """
    if con is None:
        with readers.reader() as own:
            return feature_card(transcoder_id, feature, own)
    stats, examples, effects, neighbors = con.execute(
        _CARD_SQL, {"tid": transcoder_id, "feature": int(feature)}
    ).fetchone()
    if stats is None:
        return None
    strs = _token_strings(con, stats["model"])

    def tok(i: int) -> str:
        return strs.get(i, f"<{i}>")

    cards = [
        {
            "kind": e["kind"],
            "rank": e["rank"],
            "context_id": e["context_id"],
            "position": e["position"],
            "activation": e["activation"],
            "tokens": [tok(i) for i in e["token_ids"]],
            "acts": list(e["token_acts"])[: len(e["token_ids"])],
            "highlight": e["position"] - e["window_start"],
        }
        for e in sorted(examples or [], key=lambda e: (_kind_key(e["kind"]), e["rank"]))
    ]
    token_effects: dict[str, list[tuple[str, float]]] = {}
    for t in effects or []:
        token_effects.setdefault(t["kind"], []).append((tok(t["token_id"]), t["value"]))
    return {
        "transcoder_id": transcoder_id,
        "feature": int(feature),
        "stats": stats,
        "examples": cards,
        "token_effects": token_effects,
        "neighbors": neighbors or [],
    }
