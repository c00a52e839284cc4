"""Influence, graph scores and influence-based pruning of an attribution graph (circuit-tracer's definitions).

Two influences per node:
  * signed influence (`GraphNode.influence`): the attribution flowing from the node to the target. The target's is
    its value; every other node's is Σ over its out-edges weight · μ_dst, μ_dst = influence / value for features,
    μ of the node it feeds for attention and skip nodes; computed in decreasing stage order. The leaves' influences sum to
    the target's value.
  * normalized influence (circuit-tracer's `compute_influence`): with Â the adjacency matrix (rows = destination)
    of |weights| normalized so each row sums to 1, and e the target's indicator, influence = e (Â + Â² + ...).
    Bias and pruned-remainder leaves have no counterpart in circuit-tracer (which drops biases) and are left out of
    Â; attention and skip nodes pass influence through like any node.

Scores (circuit-tracer's `compute_graph_scores`, on the graph before pruning):
  * replacement score = influence(embeddings) / (influence(embeddings) + influence(errors)): the share of the
    end-to-end influence from tokens to the target that flows through features rather than error nodes.
  * completeness score = Σ_n (1 − Σ_errors Â[n, ·]) (influence_n + e_n) / Σ_n (influence_n + e_n): the
    influence-weighted share of every node's inputs that are not errors.
  * error share = Σ |signed influence of error nodes| / Σ |signed influence of all leaves|: how much of the target's
    attribution, in absolute terms, the graph leaves unexplained in transcoder errors and MLPs without a transcoder.

Pruning (circuit-tracer's `prune_graph`, defaults NODE_THRESHOLD and EDGE_THRESHOLD):
  1. Rank the nodes of Â by normalized influence; keep the smallest set of the most influential that together
     hold `node_threshold` of the total (`kept_nodes`: the node whose share crosses the threshold is kept, and
     ties with it). The target and the embeddings (ALWAYS_KEPT) are always kept.
  2. On the graph of kept nodes, score each edge by Â[dst, src] · (influence_dst + e_dst) and keep the best edges
     that together hold `edge_threshold` of the total edge score.
  3. Repeatedly drop feature, attention, skip and error nodes left without a kept out-edge, and feature,
     attention and skip nodes left without a kept incoming edge from Â.
  4. Every dropped edge into a kept node is added to that node's `pruned` remainder, so each node's incoming
     weights still sum to its value; influences are recomputed on the pruned graph.
`cumulative_influence` of a node: the share of the total normalized influence held by the nodes ranked before
it and itself (circuit-tracer's cumulative score). Step 1 at node threshold τ keeps every node whose cumulative
influence is below τ and the first that reaches it; `kept_nodes_from_cumulative` applies that rule to stored
cumulative influences (the app's pruning slider).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from interp.attribution.graph import LEAF_KINDS, PASS_THROUGH_KINDS, AttributionGraph, GraphNode, NodeKey

NODE_THRESHOLD = 0.8  # circuit-tracer's default: keep the nodes holding 80% of the influence
EDGE_THRESHOLD = 0.98  # circuit-tracer's default: keep the edges holding 98% of the edge influence
OUTSIDE = ("bias", "pruned")  # leaves with no circuit-tracer counterpart: not in Â
# kinds kept at every node threshold, as circuit-tracer keeps tokens and logits
ALWAYS_KEPT = ("target", "embed")


def signed_influence(graph: AttributionGraph) -> None:
    """Set every node's `influence` (signed attribution to the target; see top)."""
    incoming = defaultdict(list)
    for (src, dst), w in graph.edges.items():
        incoming[dst].append((src, w))
    for node in graph.nodes.values():
        node.influence = 0.0
    mult = {"target": 1.0}
    graph.nodes["target"].influence = graph.target_value
    inner = [n for n, node in graph.nodes.items() if node.kind not in LEAF_KINDS]
    for dst in sorted(inner, key=lambda n: -graph.nodes[n].stage):
        node = graph.nodes[dst]
        if node.kind == "feature":
            mult[dst] = node.influence / node.activation if node.activation else 0.0
        elif node.kind in PASS_THROUGH_KINDS:
            mult[dst] = mult.get(node.feeds, 0.0)
        for src, w in incoming[dst]:
            graph.nodes[src].influence += w * mult[dst]


# (Â as {dst: {src: share}}, normalized influence per node): what _normalized returns
Normalized = tuple[dict, dict]


def _normalized(graph: AttributionGraph, edges) -> Normalized:
    """(Â as {dst: {src: share}}, normalized influence per node of Â) over `edges` (see top)."""
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    for (src, dst), w in edges.items():
        if graph.nodes[src].kind not in OUTSIDE:
            rows[dst][src] = abs(w)
    for dst, row in rows.items():
        total = sum(row.values())
        rows[dst] = {src: w / total for src, w in row.items()} if total > 0 else {}
    influence = {n: 0.0 for n, node in graph.nodes.items() if node.kind not in OUTSIDE}
    order = sorted(influence, key=lambda n: -graph.nodes[n].stage)  # a source reads below what it feeds
    for dst in order:
        out = influence[dst] + (1.0 if dst == "target" else 0.0)
        for src, share in rows.get(dst, {}).items():
            influence[src] += out * share
    return rows, influence


def graph_scores(graph: AttributionGraph, normalized: Normalized | None = None) -> dict[str, float]:
    """Replacement score, completeness score and error share (see top); `normalized`: _normalized(graph,
    graph.edges) if the caller has it already."""
    rows, influence = normalized or _normalized(graph, graph.edges)
    kind = {n: node.kind for n, node in graph.nodes.items()}
    tokens = sum(v for n, v in influence.items() if kind[n] == "embed")
    errors = sum(v for n, v in influence.items() if kind[n] == "error")
    weight = {n: v + (1.0 if n == "target" else 0.0) for n, v in influence.items()}
    non_error = {
        n: 1.0 - sum(s for src, s in rows.get(n, {}).items() if kind[src] == "error") for n in influence
    }
    total = sum(weight.values())
    leaves = [node.influence for node in graph.nodes.values() if node.kind in LEAF_KINDS]
    leaf_total = sum(abs(v) for v in leaves)
    error_abs = sum(abs(node.influence) for node in graph.nodes.values() if node.kind == "error")
    return {
        "replacement_score": tokens / (tokens + errors) if tokens + errors > 0 else 0.0,
        "completeness_score": sum(non_error[n] * weight[n] for n in influence) / total if total > 0 else 0.0,
        "error_share": error_abs / leaf_total if leaf_total > 0 else 0.0,
    }


def cumulative_shares(scores: dict[str, float]) -> dict[str, float]:
    """Share of the total held by the entries ranked before each one (by decreasing score) and itself
    (circuit-tracer's cumulative score)."""
    total = sum(scores.values()) or 1.0
    out, running = {}, 0.0
    for key, v in sorted(scores.items(), key=lambda kv: -kv[1]):
        running += v
        out[key] = running / total
    return out


def threshold_value(scores: Sequence[float] | Tensor, share: float) -> float:
    """The smallest score among the best entries that together hold `share` of the total (circuit-tracer's
    find_threshold), in float64 whatever the input."""
    ordered = torch.as_tensor(scores, dtype=torch.float64).flatten().sort(descending=True).values
    if not len(ordered):
        return 0.0
    total = ordered.sum()
    reached = (ordered.cumsum(0) >= share * total - 1e-12 * total).nonzero()
    return float(ordered[reached[0, 0]] if len(reached) else ordered[-1])


def kept_nodes(scores: Mapping[str, float], threshold: float) -> set[str]:
    """The smallest set of the highest-scoring nodes that together hold `threshold` of the total score (the node
    that crosses it included, ties with it kept, zero scores never): pruning's step 1 (see top)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"node threshold must be between 0 and 1, not {threshold}.")
    cut = threshold_value(list(scores.values()), threshold)
    return {n for n, v in scores.items() if v >= cut and v > 0}


def kept_nodes_from_cumulative(cumulative: Mapping[str, float], threshold: float) -> set[str]:
    """`kept_nodes` for nodes known by their cumulative influence only (cumulative_shares, e.g. read back from a
    stored graph): each node's share is its cumulative influence minus that of the node ranked before it."""
    shares, before = {}, 0.0
    for n, c in sorted(cumulative.items(), key=lambda kv: kv[1]):
        shares[n], before = c - before, c
    return kept_nodes(shares, threshold)


def prune(
    graph: AttributionGraph,
    node_threshold: float = NODE_THRESHOLD,
    edge_threshold: float = EDGE_THRESHOLD,
    normalized: Normalized | None = None,
) -> AttributionGraph:
    """The graph pruned by normalized influence (steps 1-4 at the top); the input graph is left unchanged.
    `normalized`: _normalized(graph, graph.edges) if the caller has it already."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, not {v}.")
    nodes, kind = graph.nodes, {n: node.kind for n, node in graph.nodes.items()}
    always = {n for n, k in kind.items() if k in ALWAYS_KEPT}
    # 1. nodes
    _, influence = normalized or _normalized(graph, graph.edges)
    keep = kept_nodes(influence, node_threshold) | always
    # 2. edges among kept nodes
    inner = {e: w for e, w in graph.edges.items() if e[0] in keep and e[1] in keep}
    rows, infl = _normalized(graph, inner)
    score = {
        (src, dst): share * (infl[dst] + (1.0 if dst == "target" else 0.0))
        for dst, row in rows.items()
        for src, share in row.items()
    }
    cut = threshold_value(list(score.values()), edge_threshold)
    kept_edges = {e for e, s in score.items() if s >= cut and s > 0}
    # 3. drop nodes left without kept out-edges (or in-edges)
    changed = True
    while changed:
        has_out = {src for src, _ in kept_edges}
        has_in = {dst for _, dst in kept_edges}
        drop = {
            n
            for n in keep - always
            if n not in has_out or (kind[n] in ("feature", *PASS_THROUGH_KINDS) and n not in has_in)
        }
        keep -= drop
        kept_edges = {e for e in kept_edges if e[0] in keep and e[1] in keep}
        changed = bool(drop)
    # 4. the pruned graph; dropped edges into kept nodes go to their remainders
    out_nodes: dict[str, GraphNode] = {n: nodes[n] for n in nodes if n in keep}
    edges: dict[tuple[str, str], float] = {}
    remainder: dict[str, float] = defaultdict(float)
    for (src, dst), w in graph.edges.items():
        if dst not in keep:
            continue
        if kind[src] in OUTSIDE and kind[src] != "pruned" or (src, dst) in kept_edges:
            edges[(src, dst)] = w
            out_nodes[src] = nodes[src]
        else:
            remainder[dst] += w
    for dst, w in remainder.items():
        key = NodeKey("pruned", feeds=dst)
        old = nodes.get(key.id)
        label = old.label if old else f"pruned → {nodes[dst].label or dst}"
        out_nodes[key.id] = GraphNode(key.id, "pruned", None, None, None, w, label=label, feeds=dst)
        edges[(key.id, dst)] = w
    config = {**graph.config, "node_threshold": node_threshold, "edge_threshold": edge_threshold}
    pruned = AttributionGraph(graph.tokens, graph.target, graph.target_value, out_nodes, edges, config)
    pruned.scores, pruned.target_prob = dict(graph.scores), graph.target_prob
    return pruned


def finish(
    graph: AttributionGraph, node_threshold: float | None = None, edge_threshold: float | None = None
) -> AttributionGraph:
    """Influences and scores of a freshly built graph, then pruning if thresholds are given (None: no pruning)."""
    signed_influence(graph)
    normalized = _normalized(graph, graph.edges)
    graph.scores = graph_scores(graph, normalized)
    if node_threshold is not None or edge_threshold is not None:
        graph = prune(
            graph,
            NODE_THRESHOLD if node_threshold is None else node_threshold,
            EDGE_THRESHOLD if edge_threshold is None else edge_threshold,
            normalized,
        )
        signed_influence(graph)
    _, influence = _normalized(graph, graph.edges)
    cumulative = cumulative_shares(influence)
    for n, node in graph.nodes.items():
        node.cumulative_influence = 0.0 if node.kind == "target" else cumulative.get(n)
    return graph
