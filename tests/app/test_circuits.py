"""app/circuits.py: the Circuits page draws a stored attribution graph, prunes it by interp.attribution.prune's node
rule (the node set pruning keeps in memory, on a toy graph whose cumulative influences are known, at thresholds at,
just below and just above each of them), and ranks paths exactly as the in-memory graph ranks its own."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.circuits import prune_rows
from interp.attribution import AttributionGraph, FeatureTarget, GraphNode, attribute, prune
from interp.attribution.prune import OUTSIDE, finish, kept_nodes_from_cumulative
from interp.transcoder import Transcoder
from storage import layout, queries
from storage.circuits import write_graph
from tests.app.test_pages import PAGES, figure, points


def test_circuits_page_draws_and_ranks_a_stored_attribution_graph(atlas_db, tiny_model):
    tids = dict(enumerate(atlas_db["transcoders"]))
    transcoders = {layer: Transcoder.load(layout.transcoder_dir(tid)) for layer, tid in tids.items()}
    prompt = "ab<c>d"
    tokens = tiny_model.to_tokens(prompt)[0]  # [pos]
    graph = attribute(tiny_model, tokens, transcoders, FeatureTarget(1, 3, -1), n_paths=6, n_steps=3)
    gid = write_graph(graph, atlas_db["model"], prompt, f"feature:{tids[1]}:3@-1", tids)

    at = AppTest.from_file(str(PAGES["circuits"]), default_timeout=120)
    at.query_params["graph"] = gid
    at.run()
    assert not at.exception, at.exception
    page = "\n".join(m.value for m in at.markdown)
    # everything but bias/pruned leaves is drawn at threshold 1; the leaves on request
    drawn = points(figure(at))
    leaves = {n for n, node in graph.nodes.items() if node.kind in ("bias", "pruned")}
    assert set(drawn) == set(graph.nodes) - leaves
    at.checkbox(key="show_leaves").check().run()
    assert set(points(figure(at))) == set(graph.nodes)
    # the pruning slider keeps the target, the embeddings and interp's node set at 0.5 (computed from the in-memory
    # graph's cumulative influences; the page reads them back from the database)
    at.checkbox(key="show_leaves").uncheck().run()
    at.slider(key="node_threshold").set_value(0.5).run()
    kept = set(points(figure(at)))
    ranked = {
        n: node.cumulative_influence
        for n, node in graph.nodes.items()
        if node.kind not in (*OUTSIDE, "target")
    }
    always = {n for n, node in graph.nodes.items() if node.kind in ("target", "embed")}
    assert kept == kept_nodes_from_cumulative(ranked, 0.5) | always and len(kept) < len(drawn)
    shown = [float(v) for v in re.findall(r"<li><code>([+-][\d.]+)</code>", page)]
    expected_paths = [attr for attr, _ in graph.top_paths(10)]
    assert len(expected_paths) >= 3
    assert shown == pytest.approx(expected_paths, rel=1e-3, abs=1e-4)


def test_skip_nodes_are_drawn_as_their_own_kind(atlas_db, tiny_model):
    """A graph over skip transcoders: every skip node is drawn, in the skip legend entry, labelled by its layer."""
    tids = dict(enumerate(atlas_db["transcoders"]))
    g = torch.Generator().manual_seed(6)
    transcoders = {}
    for layer, tid in tids.items():
        tc = Transcoder.load(layout.transcoder_dir(tid))
        twin = Transcoder(dataclasses.replace(tc.cfg, skip=True))
        twin.load_state_dict(
            {**tc.state_dict(), "W_skip": torch.randn(tc.cfg.d_out, tc.cfg.d_in, generator=g)}
        )
        transcoders[layer] = twin
    prompt = "ab<c>d"
    tokens = tiny_model.to_tokens(prompt)[0]  # [pos]
    graph = attribute(tiny_model, tokens, transcoders, FeatureTarget(1, 3, -1), n_paths=12, n_steps=3)
    skips = {n: node for n, node in graph.nodes.items() if node.kind == "skip"}
    assert skips
    gid = write_graph(graph, atlas_db["model"], prompt, f"feature:{tids[1]}:3@-1", tids)
    at = AppTest.from_file(str(PAGES["circuits"]), default_timeout=120)
    at.query_params["graph"] = gid
    at.run()
    assert not at.exception, at.exception
    drawn = points(figure(at))
    assert {n: drawn[n]["trace"] for n in skips} == {n: "transcoder skip path (linear)" for n in skips}
    assert all(drawn[n]["text"] == f"L{node.layer} skip" for n, node in skips.items())


# A toy graph whose normalized influences are dyadic, so its cumulative influences survive float32 storage exactly:
# target <- f_i (weight w_i), f_i <- the embedding x (weight w_i). Normalized influence: x 1, f_i w_i / 8 (total 2).
FAN = {"f0": 4.0, "f1": 2.0, "f2": 1.0, "f3": 1.0}
FAN_CUMULATIVE = {"x": 0.5, "f0": 0.75, "f1": 0.875, "f2": 0.9375, "f3": 1.0}  # f2 and f3 tie


def _fan_graph() -> AttributionGraph:
    total = sum(FAN.values())
    nodes = [
        GraphNode("target", "target", 0, 0, 0, total, stage=10),
        GraphNode("x", "embed", None, 0, 5, None, stage=-1),
    ]
    edges = {}
    for name, w in FAN.items():
        nodes.append(GraphNode(name, "feature", 0, 0, int(name[1:]), w, label=name, stage=5))
        edges[(name, "target")] = w
        edges[("x", name)] = w
    return finish(
        AttributionGraph(
            [5], FeatureTarget(0, 0, 0), total, {n.node_id: n for n in nodes}, edges, {"method": "greedy"}
        )
    )


def test_pruning_slider_keeps_the_node_set_interp_prune_keeps(atlas_db):
    """At every threshold at, 0.001 below and 0.001 above a node's cumulative influence, the app's kept set (read
    back from the database) is the one interp.attribution.prune keeps in memory: the smallest set reaching the
    threshold, the node that crosses it included (and the node tied with it)."""
    graph = _fan_graph()
    assert {
        n: node.cumulative_influence for n, node in graph.nodes.items() if n != "target"
    } == FAN_CUMULATIVE
    gid = write_graph(graph, atlas_db["model"], "toy", "toy fan", dict(enumerate(atlas_db["transcoders"])))
    stored = queries.graph(gid)
    assert dict(stored["nodes"].select("node_id", "cumulative_influence").iter_rows()) == {
        **FAN_CUMULATIVE,
        "target": 0.0,
    }
    kept_sets = {}
    for c in FAN_CUMULATIVE.values():
        for threshold in (c - 1e-3, c, c + 1e-3):
            if threshold > 1.0:
                continue
            in_memory = {
                n for n, node in prune(graph, threshold, 1.0).nodes.items() if node.kind not in OUTSIDE
            }
            shown, _ = prune_rows(stored["nodes"], stored["edges"], threshold)
            assert set(shown["node_id"]) == in_memory, threshold
            kept_sets[threshold] = in_memory - {"target", "x"}
    # the thresholds do reach the rule's edges: the crossing node is kept, a tie of it too
    assert kept_sets[0.75] == {"f0"} and kept_sets[0.75 + 1e-3] == {"f0", "f1"}
    assert kept_sets[0.9375] == {"f0", "f1", "f2", "f3"}
    # the page itself, at a slider value just above f0's cumulative influence
    at = AppTest.from_file(str(PAGES["circuits"]), default_timeout=120)
    at.query_params["graph"] = gid
    at.run()
    at.slider(key="node_threshold").set_value(0.8).run()
    assert set(points(figure(at))) == {"target", "x", "f0", "f1"}
