"""Assets `feature_edges` and `attribution_graphs` on the tiny model with random transcoders in the database:
rows match interp, re-runs replace instead of duplicating, dropped prompts disappear, the balance check passes."""

from __future__ import annotations

import json
import os

import dagster as dg
import polars as pl
import pytest
import torch

from assets.circuits import attribution_graphs, feature_edges, graphs_balance
from interp.attribution import (
    EDGE_THRESHOLD,
    MAX_FEATURE_NODES,
    NODE_THRESHOLD,
    attribute,
    attribute_exact,
    parse_target,
)
from interp.faithfulness import SETTINGS
from storage import layout, queries
from storage import transcoders as tc_store
from storage.db import readers
from tests.assets.runs import materialize
from tests.interp.test_edges import make_transcoders

LAYERS = (0, 2)  # the atlas's layers: random transcoders at 0 and 2 of the tiny model's 3

GRAPHS = {
    "graphs": [
        {"prompt": "hello world, hello", "target": 'logit:" "-"w"'},
        {"prompt": "abc abc ab", "target": "feature:tiny/L2/relu-24:3@-2"},
    ],
    "n_paths": 8,
    "n_steps": 2,
}


@pytest.fixture
def atlas(atlas_home, tiny_model, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ATLAS_MODEL", tiny_model_dir)  # the model of every run (tests.assets.runs)
    tcs = make_transcoders([0, 2], tiny_model.cfg.d_model, d_sae=24, seed=5)
    for layer, tc in tcs.items():
        tc.cfg.model_name = tiny_model_dir
        with torch.no_grad():
            tc.W_dec.mul_(0.01)
        tc_store.save_transcoder(
            tc, f"tiny/L{layer}/relu-24", {}, 0, pl.DataFrame(), {"gate_passed": layer == 0}
        )
    return tcs


def _run(assets, config: dict) -> dg.ExecuteInProcessResult:
    return materialize(assets, layers=LAYERS, run_config={"ops": config}, raise_on_error=True)


def test_feature_edges_asset_writes_topk_rows(atlas, tiny_model):
    cfg = {"feature_edges": {"config": {"k": 4, "block": 10}}}
    res = _run([feature_edges], cfg)
    n_vias = 1 + 2 * tiny_model.cfg.n_heads  # resid + heads of layers 1 and 2
    assert readers.query("SELECT count(*) AS n FROM feature_edges")["n"][0] == 24 * 4 * n_vias
    _run([feature_edges], cfg)  # idempotent
    assert readers.query("SELECT count(*) AS n FROM feature_edges")["n"][0] == 24 * 4 * n_vias
    meta = res.asset_materializations_for_node("feature_edges")[0].metadata
    assert meta["gate_failed"].value == "tiny/L2/relu-24"
    row = readers.query(
        "SELECT * FROM feature_edges WHERE via = 'resid' AND dst_feature = 7 ORDER BY rank LIMIT 1"
    )
    w = (atlas[0].W_dec[row["src_feature"][0]] @ atlas[2].W_enc[:, 7]).item()
    assert row["weight"][0] == pytest.approx(w, rel=1e-5)


@pytest.mark.parametrize("method", ["exact", "greedy"])
def test_attribution_graphs_asset_stores_balanced_graphs_and_exports(atlas, tiny_model, method):
    config = {**GRAPHS, "method": method}
    res = _run([attribution_graphs], {"attribution_graphs": {"config": config}})
    graphs = queries.graphs()
    assert graphs.height == 2
    table = res.asset_materializations_for_node("attribution_graphs")[0].metadata["graphs"].value
    assert "from_features" in table and "from_mlps_without_transcoder" in table
    # targets are stored as strings, tokens quoted as the tokenizer writes them
    assert set(graphs["target"]) == {'logit:" "-"w"@18', "feature:tiny/L2/relu-24:3@9"}
    # each stored graph is the one interp.attribution builds from the same prompt (BOS first), target and
    # transcoders with the config's method and circuit-tracer's default pruning (the asset's defaults): the same
    # nodes, and the same scores through REAL (float32) columns, whose rounding is 6e-8 relative
    tok = tiny_model.tokenizer
    for spec in GRAPHS["graphs"]:
        tokens = torch.tensor([tok.bos_token_id] + tok(spec["prompt"], add_special_tokens=False)["input_ids"])
        target = parse_target(spec["target"], tok)
        if method == "exact":
            expected = attribute_exact(
                tiny_model, tokens, atlas, target, MAX_FEATURE_NODES, node_threshold=NODE_THRESHOLD,
                edge_threshold=EDGE_THRESHOLD,
            )  # fmt: skip
        else:
            expected = attribute(
                tiny_model, tokens, atlas, target, GRAPHS["n_paths"], GRAPHS["n_steps"],
                node_threshold=NODE_THRESHOLD, edge_threshold=EDGE_THRESHOLD,
            )  # fmt: skip
        row = graphs.filter(pl.col("prompt") == spec["prompt"]).row(0, named=True)
        assert row["method"] == method
        assert set(queries.graph(row["graph_id"])["nodes"]["node_id"]) == set(expected.nodes)
        assert {name: row[name] for name in expected.scores} == pytest.approx(expected.scores, rel=1e-6)
    # every graph carries its counts, equal to what its stored rows say
    for row in graphs.iter_rows(named=True):
        stored = queries.graph(row["graph_id"])
        assert (row["n_nodes"], row["n_edges"]) == (stored["nodes"].height, stored["edges"].height)
        exported = json.load(open(layout.join(layout.exports_dir(), f"graph-{row['graph_id']}.json")))
        info = exported["metadata"]["info"]
        assert info["target"] == row["target"]
        # the same scores, one through a REAL (float32) column: rounding there is 6e-8 relative
        assert info["replacement_score"] == pytest.approx(row["replacement_score"], rel=1e-6)
        assert info["completeness_score"] == pytest.approx(row["completeness_score"], rel=1e-6)
        assert exported["metadata"]["node_threshold"] == 0.8
        # faithfulness: every setting, the top feature nodes by |influence|, summary = rows
        faith = readers.query("SELECT * FROM graph_faithfulness WHERE graph_id = ?", [row["graph_id"]])
        assert sorted(faith["setting"]) == sorted(SETTINGS)
        per_node = readers.query("SELECT * FROM graph_interventions WHERE graph_id = ?", [row["graph_id"]])
        n_features = stored["nodes"].filter(pl.col("kind") == "feature").height
        assert faith["n_nodes"].to_list() == [min(20, n_features)] * len(SETTINGS)
        assert per_node.height == len(SETTINGS) * min(20, n_features)
        influence = dict(zip(stored["nodes"]["node_id"], stored["nodes"]["influence"]))
        for r in per_node.iter_rows(named=True):
            assert r["predicted"] == -influence[r["node_id"]]  # both stored as REAL from the same float
    check = _run([attribution_graphs, graphs_balance], {"attribution_graphs": {"config": config}})
    assert all(c.passed for c in check.get_asset_check_evaluations())
    for gid in graphs["graph_id"]:
        path = layout.join(layout.exports_dir(), f"graph-{gid}.json")
        assert os.path.exists(path) and json.load(open(path))["metadata"]["slug"] == f"graph-{gid}"
    index = json.load(open(layout.join(layout.exports_dir(), "graph-metadata.json")))["graphs"]
    assert {g["slug"] for g in index} == {f"graph-{gid}" for gid in graphs["graph_id"]}
    # the logit target's value is the model's own logit difference
    logit_graph = graphs.filter(pl.col("target").str.starts_with("logit"))
    toks = torch.tensor(
        [[1] + tiny_model.tokenizer("hello world, hello", add_special_tokens=False)["input_ids"]]
    )
    logits = tiny_model(toks)[0, -1]
    t = parse_target(GRAPHS["graphs"][0]["target"], tiny_model.tokenizer)
    assert logit_graph["target_value"][0] == pytest.approx(float(logits[t.token] - logits[t.other]), rel=1e-4)
    # dropping a prompt from the config removes its graph, nodes and edges
    one = {**GRAPHS, "graphs": GRAPHS["graphs"][:1]}
    _run([attribution_graphs], {"attribution_graphs": {"config": one}})
    assert queries.graphs().height == 1
    assert readers.query("SELECT count(DISTINCT graph_id) AS n FROM graph_nodes")["n"][0] == 1


def test_definitions_load_with_circuits():
    from assets.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"feature_edges", "attribution_graphs"} <= keys


def test_feature_target_on_a_layer_without_a_transcoder_is_a_clear_error(atlas):
    bad = {"graphs": [{"prompt": "abc abc ab", "target": "feature:L1:3"}], "n_paths": 4, "n_steps": 1}
    with pytest.raises(Exception, match="layer 1, which has no transcoder"):
        _run([attribution_graphs], {"attribution_graphs": {"config": bad}})
