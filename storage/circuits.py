"""Circuits in the database: input-invariant `feature_edges`, and attribution `graphs` with their `graph_nodes` and
`graph_edges`. The one place that turns interp.edges / interp.attribution objects into rows and back.

Writes are delete-then-insert in one write unit (storage.db.working_copy.transaction: one transaction, then a
published snapshot): `write_feature_edges` replaces every edge into the model's
transcoders (old transcoder ids of the model included), `write_graph` replaces one graph's three tables' rows.
Graph ids are stable: a hash of (model, prompt, target), so re-running a configured prompt replaces its graph.
Reads live in storage.queries (feature cards' upstream/downstream, `graph()`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from interp.attribution import AttributionGraph
from interp.edges import TopEdges
from interp.faithfulness import NodeIntervention, agreement
from interp.transcoder import Transcoder
from storage import transcoders as tc_store
from storage.db import readers, row_writes, working_copy

SCORES = ("replacement_score", "completeness_score", "error_share")  # interp.attribution.prune
# a graph's rows, children first
GRAPH_TABLES = ("graph_faithfulness", "graph_interventions", "graph_edges", "graph_nodes", "graphs")


def graph_id(model: str, prompt: str, target: str) -> str:
    """Stable id of the graph of `target` on `prompt` under `model` (16 hex digits)."""
    return hashlib.sha256(f"{model}\x00{prompt}\x00{target}".encode()).hexdigest()[:16]


def load_atlas_transcoders(
    model: str, layers: Iterable[int] | None, device: str = "cpu"
) -> tuple[dict[int, str], dict[int, Transcoder], list[str]]:
    """(layer -> id, layer -> Transcoder, ids that failed their quality gate) of the latest transcoder of each of
    `layers` (None: every trained layer). Circuits use failed transcoders too, and say so."""
    listed = tc_store.list_transcoders(model)
    if layers is not None:
        listed = listed.filter(pl.col("layer").is_in(list(layers)))
    if listed.height == 0:
        raise LookupError(f"No transcoders for {model}; materialize `transcoders` first (make atlas).")
    ids = dict(zip(listed["layer"].to_list(), listed["transcoder_id"].to_list()))
    tcs = {
        layer: tc_store.load_transcoder(tid, device=device).requires_grad_(False)
        for layer, tid in ids.items()
    }
    failed = [tid for tid in ids.values() if not tc_store.gate_status(tid)[0]]
    return ids, tcs, failed


# ---- feature_edges -------------------------------------------------------------------------------------------


def edges_frame(top: TopEdges, transcoder_ids: Mapping[int, str]) -> pl.DataFrame:
    """Rows of `feature_edges` for one (downstream transcoder, via): d_sae_dst × k rows."""
    d_dst, k = top.weight.shape
    layers = sorted(transcoder_ids)
    src_ids = np.array([transcoder_ids[layer] for layer in layers])[
        np.searchsorted(layers, top.src_layer.numpy())
    ]
    return pl.DataFrame(
        {
            "src_transcoder_id": src_ids.reshape(-1),
            "src_feature": top.src_feature.numpy().reshape(-1).astype(np.int32),
            "dst_transcoder_id": transcoder_ids[top.dst_layer],
            "dst_feature": np.repeat(np.arange(d_dst, dtype=np.int32), k),
            "via": top.via,
            "weight": top.weight.numpy().reshape(-1).astype(np.float32),
            "rank": np.tile(np.arange(k, dtype=np.int32), d_dst),
        }
    )


def write_feature_edges(model: str, frames: Iterable[pl.DataFrame], transcoder_ids: Iterable[str]) -> int:
    """Replace all edges into `model`'s transcoders (and into `transcoder_ids`) with `frames`, atomically."""
    frames = list(frames)
    rows = pl.concat(frames) if frames else pl.DataFrame()
    ids = sorted(set(transcoder_ids))
    with working_copy.transaction() as con:
        con.execute(
            "DELETE FROM feature_edges WHERE dst_transcoder_id IN "
            "(SELECT transcoder_id FROM transcoders WHERE model = ?)",
            [model],
        )
        n = row_writes.replace_rows(con, "feature_edges", rows, {"dst_transcoder_id": ids})
    return n


# ---- attribution graphs --------------------------------------------------------------------------------------


def graph_frames(
    gid: str, graph: AttributionGraph, model: str, prompt: str, target: str, transcoder_ids: Mapping[int, str]
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(graphs row, graph_nodes rows, graph_edges rows) of one attribution graph."""
    meta = pl.DataFrame(
        {
            "graph_id": [gid],
            "model": [model],
            "prompt": [prompt],
            "tokens": [graph.tokens],
            "target": [target],
            "target_value": [graph.target_value],
            "target_prob": [graph.target_prob],
            "method": [graph.config["method"]],
            "config": [
                json.dumps({**graph.config, "transcoder_ids": {str(k): v for k, v in transcoder_ids.items()}})
            ],
            **{name: [graph.scores.get(name)] for name in SCORES},
            "n_nodes": [len(graph.nodes)],
            "n_edges": [len(graph.edges)],
        },
        schema_overrides={
            "tokens": pl.List(pl.Int32),
            "target_value": pl.Float32,
            "target_prob": pl.Float32,
            **{name: pl.Float32 for name in SCORES},
            "n_nodes": pl.Int32,
            "n_edges": pl.Int32,
        },
    ).with_columns(created_at=row_writes.now())
    nodes = list(graph.nodes.values())
    node_rows = pl.DataFrame(
        {
            "graph_id": gid,
            "node_id": [n.node_id for n in nodes],
            "kind": [n.kind for n in nodes],
            "layer": [n.layer for n in nodes],
            "position": [n.position for n in nodes],
            "feature": [n.feature for n in nodes],
            "transcoder_id": [transcoder_ids.get(n.layer) if n.kind == "feature" else None for n in nodes],
            "activation": [n.activation for n in nodes],
            "influence": [n.influence for n in nodes],
            "label": [n.label for n in nodes],
            "cumulative_influence": [n.cumulative_influence for n in nodes],
            "feeds": [n.feeds for n in nodes],
        },
        schema_overrides={
            "layer": pl.Int32,
            "position": pl.Int32,
            "feature": pl.Int32,
            "transcoder_id": pl.Utf8,
            "activation": pl.Float32,
            "influence": pl.Float32,
            "cumulative_influence": pl.Float32,
            "feeds": pl.Utf8,
        },
    )
    if isinstance(getattr(graph.target, "feature", None), int):  # a feature target: its transcoder
        node_rows = node_rows.with_columns(
            transcoder_id=pl.when(pl.col("node_id") == "target")
            .then(pl.lit(transcoder_ids.get(graph.target.layer)))
            .otherwise(pl.col("transcoder_id"))
        )
    edge_rows = pl.DataFrame(
        {
            "graph_id": gid,
            "src_node": [s for s, _ in graph.edges],
            "dst_node": [d for _, d in graph.edges],
            "weight": list(graph.edges.values()),
        },
        schema_overrides={"weight": pl.Float32},
    )
    return meta, node_rows, edge_rows


def faithfulness_frames(
    gid: str, interventions: Sequence[NodeIntervention]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(graph_interventions rows, graph_faithfulness rows) of one graph's real-model interventions."""
    settings = sorted({s for i in interventions for s in i.actual})
    per_node = pl.DataFrame(
        [
            {
                "graph_id": gid,
                "setting": setting,
                "node_id": i.node_id,
                "layer": i.layer,
                "position": i.position,
                "feature": i.feature,
                "predicted": i.predicted,
                "actual": i.actual[setting],
            }
            for setting in settings
            for i in interventions
        ],
        schema=row_writes.polars_schema("graph_interventions"),
    )
    summary = pl.DataFrame(
        [
            {"graph_id": gid, "setting": setting, **_renamed(agreement(interventions, setting))}
            for setting in settings
        ],
        schema=row_writes.polars_schema("graph_faithfulness"),
    )
    return per_node, summary


def _renamed(stats: dict) -> dict:
    return {"n_nodes" if k == "n" else k: v for k, v in stats.items()}


def write_graph(
    graph: AttributionGraph,
    model: str,
    prompt: str,
    target: str,
    transcoder_ids: Mapping[int, str],
    interventions: Sequence[NodeIntervention] = (),
) -> str:
    """Store one graph and its real-model interventions (replacing any graph with the same id); returns its id."""
    gid = graph_id(model, prompt, target)
    meta, nodes, edges = graph_frames(gid, graph, model, prompt, target, transcoder_ids)
    per_node, summary = faithfulness_frames(gid, interventions)
    where = {"graph_id": gid}
    row_writes.write_many(
        [
            ("graphs", meta, where),
            ("graph_nodes", nodes, where),
            ("graph_edges", edges, where),
            ("graph_interventions", per_node, where),
            ("graph_faithfulness", summary, where),
        ]
    )
    return gid


def delete_graphs_except(model: str, keep: Iterable[str]) -> None:
    """Remove `model`'s graphs not in `keep` (prompts dropped from the config), with their nodes and edges."""
    keep = list(keep)
    stale = "SELECT graph_id FROM graphs WHERE model = ? AND graph_id NOT IN (SELECT unnest(?::VARCHAR[]))"
    with working_copy.transaction() as con:
        for table in GRAPH_TABLES:
            con.execute(f"DELETE FROM {table} WHERE graph_id IN ({stale})", [model, keep])


def bookkeeping_residuals(model: str) -> pl.DataFrame:
    """Per non-leaf graph node: its value, the sum of its incoming edges, and the mismatch relative to the
    node's scale (max of |value| and the sum of |incoming|), worst first. Should be ~1e-6 (float32 rows)."""
    return readers.query(
        """
        SELECT *, abs(incoming - activation) / greatest(abs(activation), magnitude, 1e-9) AS rel_error
        FROM (
            SELECT n.graph_id, n.node_id, n.kind, n.activation,
                   sum(e.weight) AS incoming, sum(abs(e.weight)) AS magnitude
            FROM graph_nodes n
            JOIN graphs g USING (graph_id)
            JOIN graph_edges e ON e.graph_id = n.graph_id AND e.dst_node = n.node_id
            WHERE g.model = ? AND n.kind IN ('target', 'feature', 'attn')
            GROUP BY n.graph_id, n.node_id, n.kind, n.activation
        )
        ORDER BY rel_error DESC
        """,
        [model],
    )
