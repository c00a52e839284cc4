"""The greedy path search (Dunefsky et al. 2024, §3.2 and App. D) that builds an attribution graph.

1. The target is a reader: a feature pre-activation at (layer, position) or a logit (difference) at a position.
2. Greedy search for `n_steps` steps. Each frontier path ends at node a with multiplier μ_a (attribution to the
   target per unit of a's value; μ_target = 1) and proposes every upstream feature, attention node, skip path
   and embedding b with path attribution μ_a · w(b→a). The top `n_paths` proposals by |attribution| over the
   whole frontier become the next frontier, with μ_b = μ_a · w(b→a) / z_b for features, μ_b = μ_a for
   attention and skip nodes (embeddings end a path).
3. The graph holds every node on a kept path. Each feature, attention, skip and target node gets an edge from
   every upstream graph node, from every error, bias and embedding leaf at its position, and one `pruned`
   edge with the sum of the contributions left out, so its incoming weights sum to its value.
4. Influence, scores and (optionally) influence-based pruning: interp.attribution.prune.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from interp.attribution.cache import PromptCache
from interp.attribution.decompose import _Decomposition, decompose_many
from interp.attribution.graph import (
    LEAF_KINDS,
    AttributionGraph,
    GraphNode,
    NodeKey,
    embed_label,
    error_label,
    feature_label,
    token_text_at,
)
from interp.attribution.prune import finish
from interp.attribution.targets import FeatureTarget, Target, token_text
from interp.transcoder import Transcoder

log = logging.getLogger(__name__)

# Search defaults for a full-depth atlas: attention and skip nodes are steps of a path too, so at 30 layers a path
# needs several steps to reach the features below; on SmolLM2's IOI and years prompts 16 paths x 3 steps kept 0-2
# feature nodes and 128 x 6 keeps 10-36; time per graph: README, Results (`python -m bench circuits`).
N_PATHS = 128
N_STEPS = 6


def target_label(target: Target, t: int, tokenizer=None) -> str:
    """How the target node is labelled: 'L3 #12 @5' or 'logit " Mary" − " John"' (token ids without a tokenizer)."""
    if isinstance(target, FeatureTarget):
        return f"L{target.layer} #{target.feature} @{t}"
    other = "" if target.other is None else f" − {token_text(target.other, tokenizer)}"
    return f"logit {token_text(target.token, tokenizer)}{other}"


class _Builder:
    def __init__(self, pc: PromptCache, token_strs: Sequence[str] | None):
        self.pc, self.token_strs = pc, token_strs
        self.nodes: dict[str, GraphNode] = {}
        self.decomps: dict[str, _Decomposition] = {}
        # pass-through children of each node: (m, h, s) -> attention node id, layer -> skip node id
        self.attn_children: dict[str, dict[tuple[int, int, int], str]] = defaultdict(dict)
        self.skip_children: dict[str, dict[int, str]] = defaultdict(dict)
        self.leaf_ids: dict[NodeKey, str] = {}  # a leaf key's id, formatted once

    def tok(self, pos: int) -> str:
        return token_text_at(pos, self.pc.tokens, self.token_strs)

    def decomposition(self, node_id: str) -> _Decomposition:
        if node_id not in self.decomps:
            self.decompose(node_id)
        return self.decomps[node_id]

    def decompose(self, *node_ids: str, batch: int = 64, heads: bool = True) -> None:
        """Decompose the nodes not yet decomposed, `batch` readers per call of decompose_many, in stage order: a
        batch's attention products run over the layers below its highest reader. heads=False for nodes that will
        not be expanded (decompose_many)."""
        todo = sorted(
            (n for n in dict.fromkeys(node_ids) if n not in self.decomps), key=lambda n: self.nodes[n].stage
        )
        for i in range(0, len(todo), batch):
            nodes = [self.nodes[n] for n in todo[i : i + batch]]
            self.skip_readers(nodes)
            readers = torch.stack([node.reader for node in nodes])  # [N, d_model]
            stages, positions = [n.stage for n in nodes], [n.position for n in nodes]
            parts = decompose_many(self.pc, stages, positions, readers, heads=heads)
            self.decomps.update(zip(todo[i : i + batch], parts))

    def feature(self, layer: int, t: int, i: int) -> str:
        node_id = NodeKey("feature", layer, t, i).id
        if node_id not in self.nodes:
            pc = self.pc
            tc = pc.transcoders[layer]
            stage = 2 * layer + 1
            self.nodes[node_id] = GraphNode(
                node_id, "feature", layer, t, i, pc.feature_value(layer, t, i),
                label=feature_label(layer, t, i, self.tok(t)), stage=stage,
                reader=pc.reader(stage, t, tc.W_enc[:, i]),
                own_bias=(NodeKey("bias", layer, t, detail="enc"), pc.b_enc(layer, i)),
            )  # fmt: skip
        return node_id

    def attn(self, dst: str, m: int, h: int, s: int, value: float) -> str:
        pc, dst_node = self.pc, self.nodes[dst]
        t = dst_node.position
        node_id = NodeKey("attn", m, s, h, feeds=dst, feeds_position=t).id
        if node_id not in self.nodes:
            ov = pc.W_V[m, pc.kv_head[h]] @ self.decomposition(dst).u[m, h]  # [d_model] W_V W_O w_dst
            reader = pc.pattern[m, h, t, s] * pc.reader(2 * m, s, ov)
            self.nodes[node_id] = GraphNode(
                node_id, "attn", m, s, h, value, label=f"L{m}.H{h} {s}→{t} {self.tok(s)}", stage=2 * m,
                reader=reader, feeds=dst,
            )  # fmt: skip
            self.attn_children[dst][(m, h, s)] = node_id
        return node_id

    def skip(self, dst: str, layer: int, value: float) -> str:
        """The skip path W_skip x of `layer` at dst's position, as read by dst: it reads the MLP input through
        W_skip^T w_dst, so its value is exactly its contribution into dst. Its reader is made when it is first
        decomposed, with the other skip readers of its layer (`skip_readers`)."""
        t = self.nodes[dst].position
        node_id = NodeKey("skip", layer, t, feeds=dst).id
        if node_id not in self.nodes:
            self.nodes[node_id] = GraphNode(
                node_id, "skip", layer, t, None, value, label=f"L{layer} skip @{t} {self.tok(t)}",
                stage=2 * layer + 1, feeds=dst,
            )  # fmt: skip
            self.skip_children[dst][layer] = node_id
        return node_id

    def skip_readers(self, nodes: list[GraphNode]) -> None:
        """Give the skip nodes among `nodes` that have none their reader W_skip^T w_dst, one product per layer."""
        by_layer: dict[int, list[GraphNode]] = defaultdict(list)
        for node in nodes:
            if node.kind == "skip" and node.reader is None:
                by_layer[node.layer].append(node)
        for layer, group in by_layer.items():
            W = torch.stack([self.nodes[node.feeds].reader for node in group])  # [N, d_model] w_dst
            positions = torch.tensor([node.position for node in group], device=W.device)
            readers = self.pc.reader(2 * layer + 1, positions, W @ self.pc.transcoders[layer].W_skip)
            for node, reader in zip(group, readers):
                node.reader = reader

    def leaf_label(self, key: NodeKey) -> str:
        kind, layer, pos = key.kind, key.layer, key.position
        where = "" if pos is None else f" @{pos} {self.tok(pos)}"
        if kind == "embed":
            return embed_label(pos, self.tok(pos))
        if kind == "error":
            return error_label(layer, pos, self.tok(pos), layer in self.pc.transcoders and pos != 0)
        if kind == "bias":
            return f"{key.detail} bias L{layer}{where}"
        return f"pruned → {self.nodes[key.feeds].label or key.feeds}"

    def leaf(self, key: NodeKey) -> str:
        node_id = self.leaf_ids.get(key)
        if node_id is None:
            node_id = self.leaf_ids[key] = key.id
        if node_id not in self.nodes:
            token = int(self.pc.tokens[key.position]) if key.kind == "embed" else None
            self.nodes[node_id] = GraphNode(
                node_id, key.kind, key.layer, key.position, token, None, label=self.leaf_label(key),
                feeds=key.feeds,
            )  # fmt: skip
        return node_id

    def edges(self) -> dict[tuple[str, str], float]:
        """Step 3: the incoming edges of every non-leaf node, a `pruned` remainder closing each node's books."""
        edges: dict[tuple[str, str], float] = {}
        inner = [n for n, node in self.nodes.items() if node.kind not in LEAF_KINDS]
        # the nodes not decomposed yet are the last step's, never expanded: no head of theirs is in the graph
        self.decompose(*inner, heads=False)
        # the graph's features at each position, keyed layer * stride + index like a decomposition's candidates
        stride = 1 + max((tc.d_sae for tc in self.pc.transcoders.values()), default=0)
        feature_ids: dict[int, dict[int, str]] = defaultdict(dict)  # position -> key -> node id
        for node_id, node in self.nodes.items():
            if node.kind == "feature":
                feature_ids[node.position][node.layer * stride + node.feature] = node_id
        feature_keys = {
            t: torch.tensor(list(ids), device=self.pc.tokens.device) for t, ids in feature_ids.items()
        }
        for dst in inner:
            node, d = self.nodes[dst], self.decomposition(dst)
            keys = d.feat_layer * stride + d.feat_index  # [F]
            in_graph = torch.isin(keys, feature_keys.get(node.position, keys[:0]))  # [F]
            pruned = float(d.feat_w[~in_graph].sum())
            ids = feature_ids[node.position]
            for key, w in zip(keys[in_graph].tolist(), d.feat_w[in_graph].tolist()):
                edges[(ids[key], dst)] = w
            kept = self.attn_children.get(dst, {})
            left_out = d.attn.clone()
            if kept:
                m, h, s = zip(*kept)
                for src, w in zip(kept.values(), d.attn[m, h, s].tolist()):
                    edges[(src, dst)] = w
                left_out[m, h, s] = 0.0
            pruned += float(left_out.sum()) + d.heads_total
            skips = self.skip_children.get(dst, {})
            for layer, w in zip(d.skip_layer.tolist(), d.skip_w.tolist()):
                if layer in skips:
                    edges[(skips[layer], dst)] = w
                else:
                    pruned += w
            leaves = dict(d.leaves)
            if node.own_bias is not None:
                leaves[node.own_bias[0]] = node.own_bias[1]
            for key, w in leaves.items():
                if w != 0.0:
                    edges[(self.leaf(key), dst)] = w
            if pruned != 0.0:
                src = self.leaf(NodeKey("pruned", feeds=dst))
                self.nodes[src].activation = pruned
                edges[(src, dst)] = pruned
        return edges


@torch.no_grad()
def attribute(
    model,
    tokens: Tensor,  # [pos] token ids (BOS included if the model expects it)
    transcoders: Mapping[int, Transcoder],
    target: Target,
    n_paths: int = N_PATHS,
    n_steps: int = N_STEPS,
    token_strs: Sequence[str] | None = None,
    cache: PromptCache | None = None,
    tokenizer=None,
    node_threshold: float | None = None,
    edge_threshold: float | None = None,
) -> AttributionGraph:
    """Greedy top-`n_paths` path search from `target` back through features, heads and embeddings (see top),
    then influence-based pruning when thresholds are given (interp.attribution.prune; None keeps everything)."""
    pc = cache or PromptCache(model, tokens, transcoders)
    b = _Builder(pc, token_strs)
    # 1. the target reader
    stage, t, reader, bias = pc.target_reader(target)
    if isinstance(target, FeatureTarget):
        value = pc.feature_value(target.layer, t, target.feature)
        own_bias, layer, prob = (NodeKey("bias", target.layer, t, detail="enc"), bias), target.layer, None
    else:
        value, own_bias = pc.logit_value(target, t), (NodeKey("bias", pc.n_layers, t, detail="unembed"), bias)
        layer, prob = None, pc.logit_prob(target, t)
    b.nodes["target"] = GraphNode(
        "target", "target", layer, t, getattr(target, "feature", getattr(target, "token", None)), value,
        label=target_label(target, t, tokenizer), stage=stage, reader=reader, own_bias=own_bias,
    )  # fmt: skip
    # 2. greedy search
    frontier: list[tuple[str, float]] = [("target", 1.0)]
    for _ in range(n_steps):
        if not frontier:  # every path ended at an embedding
            break
        b.decompose(*(dst for dst, _ in frontier))  # the whole frontier in batches
        # every frontier node's candidates, scaled by |mu|, in one vector: its top n_paths are the proposals kept
        candidates = [b.decomposition(dst).candidates() for dst, _ in frontier]
        starts = [0, *itertools.accumulate(len(c) for c in candidates)]
        scores = torch.cat([c.abs() * abs(mu) for c, (_, mu) in zip(candidates, frontier)])  # [Σ candidates]
        kept = scores.topk(min(n_paths, len(scores))).indices.tolist()  # largest first
        proposals = [(row := bisect.bisect_right(starts, k) - 1, k - starts[row]) for k in kept]
        last, frontier = frontier, []
        for row, i in proposals:
            dst, mu = last[row]
            d = b.decomposition(dst)
            n_feat, t_dst = len(d.feat_w), b.nodes[dst].position
            if i < n_feat:
                src = b.feature(int(d.feat_layer[i]), t_dst, int(d.feat_index[i]))
                z = b.nodes[src].activation
                frontier.append((src, mu * float(d.feat_w[i]) / z if z else 0.0))
            elif i < n_feat + d.attn.numel():
                m, h, s = torch.unravel_index(torch.tensor(i - n_feat), d.attn.shape)
                src = b.attn(dst, int(m), int(h), int(s), float(d.attn[m, h, s]))
                frontier.append((src, mu))
            elif i < n_feat + d.attn.numel() + len(d.skip_w):
                j = i - n_feat - d.attn.numel()
                frontier.append((b.skip(dst, int(d.skip_layer[j]), float(d.skip_w[j])), mu))
            # else: the embedding, a leaf that is always in the graph
    # 3. edges of every non-leaf node
    edges = b.edges()
    config = {
        "method": "greedy",
        "n_paths": n_paths,
        "n_steps": n_steps,
        "layers": sorted(pc.transcoders),
        "n_layers": pc.n_layers,
    }
    graph = AttributionGraph(tokens.tolist(), target, value, b.nodes, edges, config, target_prob=prob)
    # 4. influence, scores, pruning
    graph = finish(graph, node_threshold, edge_threshold)
    log.info("attribution graph: %d nodes, %d edges, target %.4g", len(graph.nodes), len(graph.edges), value)
    return graph
