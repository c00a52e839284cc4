"""interp.attribution.prune: circuit-tracer's scores and influence-based pruning on hand-built toy graphs where
the answers are known, then on a real graph of the tiny model (books still balance after pruning)."""

from __future__ import annotations

import pytest
import torch

from interp.attribution import AttributionGraph, FeatureTarget, GraphNode, attribute, graph_scores, prune
from interp.attribution.prune import finish, signed_influence
from tests.interp.test_edges import make_transcoders


def _node(node_id: str, kind: str, stage: int, value: float | None = None) -> GraphNode:
    return GraphNode(node_id, kind, None, 0, None, value, stage=stage)


def _graph(nodes: list[GraphNode], edges: dict[tuple[str, str], float], value: float) -> AttributionGraph:
    return AttributionGraph([0], FeatureTarget(0, 0), value, {n.node_id: n for n in nodes}, edges, {})


def test_scores_equal_hand_computed_values():
    """target ← f1 (3) and e1 (1); f1 ← x0 (1.5) and e2 (0.5). Normalized rows: target (f1 .75, e1 .25), f1 (x0 .75,
    e2 .25); influences f1 .75, e1 .25, x0 .5625, e2 .1875."""
    g = _graph(
        [
            _node("target", "target", 10, 4.0),
            _node("f1", "feature", 5, 2.0),
            _node("e1", "error", -1),
            _node("e2", "error", -1),
            _node("x0", "embed", -1),
        ],
        {("f1", "target"): 3.0, ("e1", "target"): 1.0, ("x0", "f1"): 1.5, ("e2", "f1"): 0.5},
        4.0,
    )
    signed_influence(g)
    assert {n: g.nodes[n].influence for n in ("x0", "e1", "e2")} == pytest.approx(
        {"x0": 2.25, "e1": 1.0, "e2": 0.75}
    )
    scores = graph_scores(g)
    assert scores["replacement_score"] == pytest.approx(0.5625 / (0.5625 + 0.25 + 0.1875))
    # Σ non-error share × (influence + target weight): target .75·1 + f1 .75·.75 + leaves (.25 + .5625 + .1875)
    assert scores["completeness_score"] == pytest.approx(
        (0.75 + 0.5625 + 1.0) / (1 + 0.75 + 0.25 + 0.5625 + 0.1875)
    )
    assert scores["error_share"] == pytest.approx((1.0 + 0.75) / 4.0)


def _fan(weights: list[float]) -> AttributionGraph:
    """target ← f_i with weight w_i; each f_i (value w_i) ← one shared embedding x."""
    nodes = [_node("target", "target", 10, sum(weights)), _node("x", "embed", -1)]
    edges = {}
    for i, w in enumerate(weights):
        nodes.append(_node(f"f{i}", "feature", 5, w))
        edges[(f"f{i}", "target")] = w
        edges[("x", f"f{i}")] = w
    return finish(_graph(nodes, edges, sum(weights)))


def _balanced(g: AttributionGraph) -> None:
    for node_id, node in g.nodes.items():
        if node.kind in ("target", "feature"):
            # a sum of float64 python floats in another order than the node's value: ~1e-15 relative; 1e-9 is ample
            assert sum(g.incoming(node_id).values()) == pytest.approx(node.activation, rel=1e-9, abs=1e-12)
    leaves = sum(
        n.influence for n in g.nodes.values() if n.kind in ("embed", "error", "bias", "skip", "pruned")
    )
    assert leaves == pytest.approx(g.target_value, rel=1e-9, abs=1e-12)


def test_pruning_keeps_the_stated_share_of_influence():
    """Normalized influences: x 1.0, f0 .5, f1 .3, f2 .1, f3 .1 (total 2). Cumulative: .5, .75, .9, .95, 1."""
    g = _fan([5.0, 3.0, 1.0, 1.0])
    cumulative = [g.nodes[n].cumulative_influence for n in ("x", "f0", "f1", "f2", "f3")]
    assert cumulative == pytest.approx([0.5, 0.75, 0.9, 0.95, 1.0], rel=1e-9)  # float64 toy sums; f2, f3 tie
    # the smallest set reaching 0.8 (circuit-tracer's rule): f1, whose cumulative share crosses 0.8, is kept; the
    # rule "cumulative share <= 0.8" would keep f0 alone
    kept = prune(g, node_threshold=0.8, edge_threshold=1.0)
    assert {n for n, node in kept.nodes.items() if node.kind == "feature"} == {"f0", "f1"}
    # the dropped features' contributions go to the target's remainder: its books still balance
    assert kept.edges[("pruned|target", "target")] == pytest.approx(2.0, rel=1e-9)
    signed_influence(kept)
    _balanced(kept)
    # a higher threshold keeps the tied tail too; the input graph is unchanged
    assert {n for n in prune(g, 0.95, 1.0).nodes if n.startswith("f")} == {"f0", "f1", "f2", "f3"}
    assert len(g.nodes) == 6


def test_edge_threshold_drops_edges_then_the_nodes_they_leave_stranded():
    """After node pruning (f0, f1): edge scores f0→target .625, x→f0 .625, f1→target .375, x→f1 .375 (total 2).
    Keeping 60% keeps f0's two edges only, so f1 loses its out-edge and goes."""
    kept = prune(_fan([5.0, 3.0, 1.0, 1.0]), node_threshold=0.8, edge_threshold=0.6)
    assert {n for n in kept.nodes if n.startswith("f")} == {"f0"}
    assert kept.edges[("pruned|target", "target")] == pytest.approx(5.0, rel=1e-9)  # float64 toy sums
    with pytest.raises(ValueError, match="between 0 and 1"):
        prune(kept, node_threshold=1.5)


def test_pruned_real_graph_balances_and_keeps_scores(tiny_model):
    tcs = make_transcoders([0, 1, 2], tiny_model.cfg.d_model, d_sae=48, seed=3)
    with torch.no_grad():
        for tc in tcs.values():
            tc.b_enc.fill_(-0.3)
            tc.W_dec.mul_(0.01)
    tokens = torch.tensor([1, 20, 31, 15, 22, 9, 40, 41, 12, 33])
    target = FeatureTarget(2, 5, -1)
    full = attribute(tiny_model, tokens, tcs, target, n_paths=16, n_steps=3)
    pruned = attribute(tiny_model, tokens, tcs, target, 16, 3, node_threshold=0.5, edge_threshold=0.9)
    assert len(pruned.nodes) < len(full.nodes) and len(pruned.edges) < len(full.edges)
    assert pruned.scores == pytest.approx(full.scores)  # scores describe the searched graph
    assert pruned.config["node_threshold"] == 0.5
    for node_id, node in pruned.nodes.items():
        if node.kind in ("target", "feature", "attn"):
            assert sum(pruned.incoming(node_id).values()) == pytest.approx(
                node.activation, rel=1e-4, abs=1e-6
            )
    leaves = sum(
        n.influence for n in pruned.nodes.values() if n.kind in ("embed", "error", "bias", "skip", "pruned")
    )
    assert leaves == pytest.approx(pruned.target_value, rel=1e-4, abs=1e-6)
