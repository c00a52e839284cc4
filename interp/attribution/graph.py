"""The attribution graph: typed node ids, nodes, edges and the graph's own path search.

Node ids are built from a `NodeKey` (kind, layer, position, feature or head, ...) and never parsed back: code that
needs a node's layer, position or the node it feeds reads the typed fields of `NodeKey` / `GraphNode`. Id strings
(stable, stored in `graph_nodes.node_id`): 'target', 'feat:L<l>:<pos>:<i>', 'attn:L<m>.H<h>:<s>><t>|<dst id>',
'skip:L<l>:<pos>|<dst id>', 'embed:<pos>', 'err:L<l>:<pos>', 'bias:<dec|attn|enc|unembed>:L<l>:<pos>',
'bias:constant' (exact graphs: every constant a node reads),
'pruned|<dst id>'.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import Tensor

from interp.attribution.targets import Target

LEAF_KINDS = ("embed", "error", "bias", "pruned")
# linear nodes that exist per node they feed: their value is exactly their contribution into it (an attention
# head's OV term from one source position; a transcoder's skip path W_skip x at one position)
PASS_THROUGH_KINDS = ("attn", "skip")
KINDS = ("target", "feature", *PASS_THROUGH_KINDS, *LEAF_KINDS)


class NodeKey(NamedTuple):
    """Typed identity of a graph node; `.id` is its stable string."""

    kind: str  # one of KINDS
    layer: int | None = None
    position: int | None = None  # where the node reads or sits (an attention node: its source position)
    index: int | None = None  # feature index (feature), head (attn)
    detail: str = ""  # bias: 'dec', 'attn', 'enc' or 'unembed'
    feeds: str | None = None  # attn, skip and pruned: id of the node whose value they are part of
    feeds_position: int | None = None  # attn: the position of the node it feeds

    @property
    def id(self) -> str:
        k, layer, pos = self.kind, self.layer, self.position
        if k == "target":
            return "target"
        if k == "feature":
            return f"feat:L{layer}:{pos}:{self.index}"
        if k == "attn":
            return f"attn:L{layer}.H{self.index}:{pos}>{self.feeds_position}|{self.feeds}"
        if k == "embed":
            return f"embed:{pos}"
        if k == "error":
            return f"err:L{layer}:{pos}"
        if k == "bias":
            return f"bias:{self.detail}" if layer is None else f"bias:{self.detail}:L{layer}:{pos}"
        if k == "skip":
            return f"skip:L{layer}:{pos}|{self.feeds}"
        if k == "pruned":
            return f"pruned|{self.feeds}"
        raise ValueError(f"Unknown node kind {k!r}.")


def token_text_at(t: int, tokens, token_strs=None) -> str:
    """How position t's token appears in node labels: its text quoted, or its id without token strings."""
    return repr(token_strs[t]) if token_strs else str(int(tokens[t]))


def feature_label(layer: int, t: int, index: int, tok: str) -> str:
    return f"L{layer} #{index} @{t} {tok}"


def error_label(layer: int, t: int, tok: str, covered: bool) -> str:
    """A transcoder's error node, or the whole MLP output where the layer has no transcoder (or at BOS)."""
    return f"L{layer} {'error' if covered else 'MLP (no transcoder)'} @{t} {tok}"


def embed_label(t: int, tok: str) -> str:
    return f"embed @{t} {tok}"


@dataclass
class GraphNode:
    node_id: str
    kind: str  # 'target', 'feature', 'attn', 'embed', 'error', 'bias', 'skip' or 'pruned'
    layer: int | None
    position: int | None
    feature: int | None  # feature index (feature), head (attn), token id (embed), target token (logit target)
    activation: float | None  # feature pre-activation, attention contribution, target value, pruned remainder
    influence: float = 0.0
    label: str = ""
    stage: int = -1  # where the node reads the residual stream (leaves: -1)
    reader: Tensor | None = field(default=None, repr=False)  # [d_model] (non-leaf nodes)
    own_bias: tuple[NodeKey, float] | None = field(default=None, repr=False)
    feeds: str | None = None  # attn, skip and pruned nodes: the node whose value they are part of
    # share of the graph's normalized influence held by nodes at least as influential (see interp.attribution.prune)
    cumulative_influence: float | None = None


@dataclass
class AttributionGraph:
    tokens: list[int]
    target: Target
    target_value: float
    nodes: dict[str, GraphNode]
    edges: dict[tuple[str, str], float]  # (src, dst) -> weight: src contributes weight to dst's value
    config: dict
    scores: dict[str, float] = field(
        default_factory=dict
    )  # replacement, completeness, error share (see prune)
    target_prob: float | None = None  # logit targets: the model's probability of the target token there

    def incoming(self, node_id: str) -> dict[str, float]:
        return {src: w for (src, dst), w in self.edges.items() if dst == node_id}

    def top_paths(self, n: int = 5, beam: int = 64) -> list[tuple[float, list[str]]]:
        """The n strongest target-rooted chains (target first) by path attribution, found by beam search."""
        incoming = defaultdict(list)
        for (src, dst), w in self.edges.items():
            incoming[dst].append((src, w))
        found: list[tuple[float, list[str]]] = []
        frontier = [(1.0, ["target"])]  # (multiplier of the last node, path)
        while frontier:
            grown = []
            for mu, path in frontier:
                for src, w in incoming[path[-1]]:
                    node = self.nodes[src]
                    if node.kind in ("bias", "pruned"):
                        continue
                    attr = mu * w
                    found.append((attr, [*path, src]))
                    if node.kind in PASS_THROUGH_KINDS:
                        grown.append((mu, [*path, src]))
                    elif node.kind == "feature" and node.activation:
                        grown.append((attr / node.activation, [*path, src]))
            grown.sort(key=lambda g: -abs(g[0] * (self.nodes[g[1][-1]].activation or 0.0)))
            frontier = grown[:beam]
        return sorted(found, key=lambda p: -abs(p[0]))[:n]
