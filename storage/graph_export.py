"""Export a stored attribution graph as circuit-tracer / Neuronpedia graph JSON (`metadata`, `qParams`, `nodes`,
`links`; circuit-tracer 0.5's `frontend.graph_models`), the one place that converts our graph rows to that frontend
format. The exports folder is directly servable by circuit-tracer's own viewer (`frontend.local_server.serve`):
each graph is `<slug>.json` and `graph-metadata.json` lists them.

Mapping: feature nodes -> 'cross layer transcoder' (node_id '<layer>_<feature>_<pos>', `feature` the Cantor pairing
of (layer, feature) as circuit-tracer numbers features), error nodes -> 'mlp reconstruction error'
('0_<layer>_<pos>'), embeddings -> 'embedding' ('E_<token>_<pos>'), a logit target -> 'logit'
('<n_layers+1>_<token>_<pos>'). circuit-tracer has no attention or skip nodes: with patterns and norm scales
frozen, a head's contribution and a transcoder's skip path are linear, so each such node is folded into direct
links (src -> attention or skip node -> dst becomes src -> dst with the same weight, summed over heads, sources
and skip layers), exactly as circuit-tracer's own edges are. Bias and
pruned-remainder nodes have no counterpart and are left out (they stay in the database). `metadata.info` carries
the target (as text), the graph's scores and its node and edge counts. A logit target's label ends in
'(p=<probability>)' as circuit-tracer writes it: the viewer parses it out of every logit node's label and stops
drawing if it is missing (tests/app/test_circuit_tracer_viewer.py).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from interp.attribution import PASS_THROUGH_KINDS
from storage import layout, queries
from storage.circuits import SCORES

SCHEMA_VERSION = 1
INDEX = "graph-metadata.json"  # the viewer's list of graphs


def slug(gid: str) -> str:
    """The graph's file stem and viewer slug."""
    return f"graph-{gid}"


def cantor(x: int, y: int) -> int:
    """Unique number of a (layer, feature) pair: circuit-tracer's feature numbering."""
    return (x + y) * (x + y + 1) // 2 + y


def _js_id(kind: str, layer: int | None, feature: int | None, pos: int) -> str:
    if kind == "feature":
        return f"{layer}_{feature}-0"
    if kind == "embed":
        return f"E_{feature}-{pos}"
    return f"{layer}_{pos}-0"


def graph_json(gid: str, token_strs: list[str] | None = None) -> dict[str, Any]:
    """The graph `gid` in the circuit-tracer / Neuronpedia JSON layout."""
    found = queries.graph(gid)
    if found is None:
        raise LookupError(f"No attribution graph {gid!r}; materialize `attribution_graphs`.")
    meta, nodes, edges = found["graph"], found["nodes"], found["edges"]
    cfg = json.loads(meta["config"]) if meta["config"] else {}
    n_layers = int(cfg.get("n_layers", 0))
    token_strs = token_strs or found["token_strs"]
    rows = {r["node_id"]: r for r in nodes.iter_rows(named=True)}
    target = rows["target"]
    logit_target = meta["target"].startswith("logit:")

    def export_id(node_id: str) -> str | None:
        r = rows[node_id]
        kind, layer, pos, f = r["kind"], r["layer"], r["position"], r["feature"]
        if kind == "target":
            return f"{n_layers + 1}_{f}_{pos}" if logit_target else f"{layer}_{f}_{pos}"
        if kind == "feature":
            return f"{layer}_{f}_{pos}"
        if kind == "error":
            return f"0_{layer}_{pos}"
        if kind == "embed":
            return f"E_{f}_{pos}"
        return None  # bias, pruned

    # fold attention and skip nodes into direct links: their only out-link goes to the node they feed (graphs
    # stored before `feeds` existed have none: their attention nodes' links are left out)
    feeds = {n: r["feeds"] for n, r in rows.items() if r["kind"] in PASS_THROUGH_KINDS and r["feeds"] in rows}

    def sink(node_id: str) -> str:
        while node_id in feeds:
            node_id = feeds[node_id]
        return node_id

    links: dict[tuple[str, str], float] = defaultdict(float)
    for e in edges.iter_rows(named=True):
        src, dst = e["src_node"], sink(e["dst_node"])
        if src in feeds or export_id(src) is None or export_id(dst) is None:
            continue
        links[(export_id(src), export_id(dst))] += e["weight"]
    # graphs stored before `target_prob` existed have none: 'nan' keeps the label parseable (it only sorts logits)
    prob = meta.get("target_prob")
    logit_label = f"{target['label']} (p={float('nan') if prob is None else prob:.3f})"
    out_nodes: dict[str, dict[str, Any]] = {}
    for node_id, r in rows.items():
        eid = export_id(node_id)
        if eid is None or eid in out_nodes:
            continue
        kind = r["kind"]
        ftype = {
            "feature": "cross layer transcoder",
            "error": "mlp reconstruction error",
            "embed": "embedding",
            "target": "logit" if logit_target else "cross layer transcoder",
        }[kind]
        is_logit = kind == "target" and logit_target
        layer = "E" if kind == "embed" else str(n_layers + 1 if is_logit else r["layer"])
        pos = r["position"]
        if kind in ("feature", "target") and not is_logit:
            number = cantor(r["layer"], r["feature"])
        elif kind == "embed":
            number = pos
        else:
            number = r["feature"] if r["feature"] is not None else -1
        out_nodes[eid] = {
            "node_id": eid,
            "feature": number,
            "layer": layer,
            "ctx_idx": pos,
            "feature_type": ftype,
            "token_prob": (prob or 0.0) if is_logit else 0.0,
            "is_target_logit": is_logit,
            "run_idx": 0,
            "reverse_ctx_idx": 0,
            "jsNodeId": f"L_{r['feature']}-{pos}"
            if is_logit
            else _js_id(kind, r["layer"], r["feature"], pos),
            "clerp": logit_label if is_logit else r["label"] or "",
            # circuit-tracer's `influence` is the node's cumulative influence (its viewer prunes on it)
            "influence": r["cumulative_influence"],
            "attribution": r["influence"],  # ours: signed attribution to the target
            "activation": r["activation"],
        }
    return {
        "metadata": {
            "slug": slug(gid),
            "scan": meta["model"],
            "transcoder_list": sorted(set(cfg.get("transcoder_ids", {}).values())),
            "prompt_tokens": token_strs,
            "prompt": meta["prompt"],
            "node_threshold": cfg.get("node_threshold"),
            "schema_version": SCHEMA_VERSION,
            "info": {
                "target": meta["target"],
                "target_value": meta["target_value"],
                "target_node": target["label"],
                "edge_threshold": cfg.get("edge_threshold"),
                **{name: meta.get(name) for name in (*SCORES, "n_nodes", "n_edges")},
            },
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": list(out_nodes.values()),
        "links": [{"source": s, "target": d, "weight": w} for (s, d), w in links.items()],
    }


def export_graph(gid: str, path: str | None = None, token_strs: list[str] | None = None) -> str:
    """Write the graph's JSON to `path` (default $ATLAS_HOME/exports/graph-<id>.json) atomically and list it in the
    folder's `graph-metadata.json` (the viewer's index); returns the path."""
    path = path or layout.join(layout.exports_dir(), f"{slug(gid)}.json")
    data = graph_json(gid, token_strs)
    with layout.atomic_local_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f)
    folder, name = path.rsplit("/", 1)
    _index(folder, data["metadata"], name.removesuffix(".json"))
    return path


def _index(folder: str, meta: dict[str, Any], stem: str) -> None:
    """Add (or replace) a graph's entry in the viewer's index of `folder`."""
    path = layout.join(folder, INDEX)
    fs = layout.fs_for(path)
    graphs = []
    if fs.exists(path):
        with fs.open(path) as f:
            graphs = json.load(f)["graphs"]
    entry = {k: meta[k] for k in ("scan", "prompt_tokens", "prompt")}
    entry |= {"slug": stem, "title_prefix": meta["info"]["target"]}
    graphs = [g for g in graphs if g.get("slug") != stem] + [entry]
    with layout.atomic_local_path(path) as tmp, open(tmp, "w") as f:
        json.dump({"graphs": graphs}, f)
