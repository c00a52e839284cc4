"""Exact attribution graphs: every direct effect among the active features of the local replacement model, the
method of circuit-tracer (Ameisen et al., 2025, "Circuit Tracing"), on the atlas's per-layer transcoders.

The local replacement model of a prompt freezes attention patterns and norm scales at their values on the prompt
and replaces every MLP that has a transcoder by its active features (activations frozen: they are nodes), its
error (a constant node) and its skip path (linear in the MLP input: attribution passes through it, to the
features, errors and embeddings below). Decoder and attention biases are constants. Between two MLP reads the
model is then linear, so the direct effect of a source node on a destination node is exact:

    A[dst, src] = out_src · ∂(reader_dst · resid[stage_dst][t_dst]) / ∂(what src writes, where it writes it)

with out_src = a_i f_dec,i for a feature, the error vector for an error node, the token embedding for a token node.
A feature's row reads f_enc,i through the frozen norm (its value is its pre-activation), the target's row reads
the unembedding direction (a logit or logit difference) or another feature's encoder.

Nodes, in the order of the dense adjacency (circuit-tracer's): the selected features (layer, position, index
ascending), one error node per layer and position (layer-major; the whole MLP output for a layer without a
transcoder), one token node per position, the target. Rows exist for the features and the target.

Conventions shared with circuit-tracer, so both compute the same matrix (tests/interp/test_exact_parity.py):
  * position 0 (BOS) has no feature and no error node: the residual stream there does not depend on the prompt
    (position 0 attends only to itself), so its MLP outputs are constants, except that the skip path passes
    attribution through at BOS as everywhere;
  * biases (b_dec, attention biases, the target's own bias) and GPT-2's positional embeddings are constants in no
    node. Each row also records the sum of its constants and of what the features left out of the graph
    contribute, so a node's incoming edges, its `pruned` remainder and its constants sum to its value exactly
    (the `graphs_balance` check). circuit-tracer drops both.

Rows come from one backward sweep of the frozen linear model per batch of readers (`_Sweep`): the gradient g
[batch, pos, d_model] starts as each reader at its stage and position and walks down the residual stream; each
MLP's sources are read off it (features: g · a_i f_dec,i at every position; errors: g · e), the skip path sends
W_skipᵀ g back to the MLP input, and each attention layer sends Σ_h patternᵀ (g W_Oᵀ) W_Vᵀ back to the sources.

Which features get a row (`max_feature_nodes`, circuit-tracer's procedure): the target's row first; then, in
rounds of `update_interval` batches, the not-yet-visited features of largest influence on the target estimated
from the rows computed so far (A + A² + ... over the row-normalised |A|). With no cap every active feature gets a
row. Features without a row are still columns of every row until the graph is packaged; then their effects go to
each row's `pruned` remainder.

Scores and pruning are circuit-tracer's (interp.attribution.prune states them), computed on the dense matrix;
the stored graph is the pruned one. Bounds: time ≈ (rows) × (layers below each row) × pos × d_model² flops (the
W_O and W_V products dominate); memory: the row store, 4 × (max_feature_nodes + 1) × (active features +
(n_layers + 1) × pos) bytes, plus 4 × batch × pos × d_model × ~4 bytes for the sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from interp.attribution.cache import PromptCache
from interp.attribution.graph import (
    AttributionGraph,
    GraphNode,
    NodeKey,
    embed_label,
    error_label,
    feature_label,
    token_text_at,
)
from interp.attribution.prune import (
    EDGE_THRESHOLD,
    NODE_THRESHOLD,
    threshold_value,
)
from interp.attribution.search import target_label
from interp.attribution.targets import FeatureTarget, Target
from interp.transcoder import Transcoder

log = logging.getLogger(__name__)

MAX_FEATURE_NODES = 2048  # rows computed at most (circuit-tracer's usual cap for a prompt of tens of tokens)
BATCH_SIZE = 256  # readers per backward sweep
UPDATE_INTERVAL = 4  # batches between two re-rankings of the features by estimated influence
CONSTANT = NodeKey("bias", detail="constant")  # every constant a node reads (see top)


class _Sources:
    """The columns of every row: the active features (not at BOS), then errors (layer-major), then tokens."""

    def __init__(self, pc: PromptCache):
        T, L = len(pc.tokens), pc.n_layers
        layers, positions, indices, values = [], [], [], []
        self.columns: dict[int, tuple[Tensor, Tensor]] = {}  # layer -> (slots [n] into [T*K], columns [n])
        start = 0
        for layer in sorted(pc.transcoders):
            z, index = pc.active_z[layer], pc.active_index[layer]  # [T, K]
            active = z > 0
            active[0] = False  # BOS: no feature nodes (see top)
            p, slot = active.nonzero(as_tuple=True)
            order = torch.argsort(p * (int(index.max()) + 1) + index[p, slot])  # position, then feature index
            p, slot = p[order], slot[order]
            n = len(p)
            self.columns[layer] = (p * z.shape[1] + slot, torch.arange(start, start + n, device=z.device))
            layers.append(torch.full((n,), layer, device=z.device))
            positions.append(p)
            indices.append(index[p, slot])
            values.append(z[p, slot])
            start += n
        device = pc.tokens.device
        self.layer = torch.cat(layers) if layers else torch.zeros(0, dtype=torch.int64, device=device)  # [F]
        self.position = torch.cat(positions) if positions else self.layer.clone()  # [F]
        self.index = torch.cat(indices) if indices else self.layer.clone()  # [F]
        self.activation = torch.cat(values) if values else torch.zeros(0, device=device)  # [F]
        self.n_features = start
        self.error_start = start
        self.token_start = start + L * T
        self.n_columns = self.token_start + T


class _Sweep:
    """Rows of the adjacency for batches of readers: one backward sweep of the frozen linear model (see top)."""

    def __init__(self, pc: PromptCache, sources: _Sources):
        self.pc, self.sources = pc, sources
        T = len(pc.tokens)
        self.decoders: dict[
            int, Tensor
        ] = {}  # layer -> [T, K, d_model] a_i f_dec,i per active slot (0 at BOS)
        self.errors, self.constants = [], []  # per layer: [T, d_model] error vectors, constant vectors
        for layer in range(pc.n_layers):
            tc = pc.transcoders.get(layer)
            mlp = pc.mlp_out[layer]  # [T, d_model]
            constant = torch.zeros_like(mlp)
            if tc is None:
                error = mlp.clone()
                constant[0] = mlp[0]
            else:
                z = pc.active_z[layer].clone()
                z[0] = 0.0
                self.decoders[layer] = (
                    torch.nn.functional.embedding(pc.active_index[layer], tc.W_dec) * z[..., None]
                )
                error = mlp - pc.y_hat[layer]
                constant[1:] = tc.b_dec
                constant[0] = mlp[0] - (pc.skip[layer][0] if pc.skip[layer] is not None else 0.0)
            error[0] = 0.0  # BOS: a constant (see top)
            self.errors.append(error)
            self.constants.append(constant)
        self.positional = pc.resid[0] - pc.token_embed  # [T, d_model] GPT-2's positional embeddings; else 0
        n_kv, d, d_head = pc.W_V.shape[1], pc.W_V.shape[2], pc.W_V.shape[3]
        self.group = pc.n_heads // n_kv  # query heads per key/value head (their W_V rows are contiguous)
        # the OV maps as two GEMM operands per layer: [d_model, H·d_head] (g W_Oᵀ) and [n_kv·d_head, d_model] (W_Vᵀ)
        self.W_O = pc.W_O.reshape(pc.n_layers, -1, d).transpose(1, 2).contiguous()
        self.W_V = pc.W_V.permute(0, 1, 3, 2).reshape(pc.n_layers, n_kv * d_head, d).contiguous()
        self.T = T

    @torch.no_grad()
    def rows(self, stages: Tensor, positions: Tensor, readers: Tensor) -> tuple[Tensor, Tensor]:
        """(rows [N, n_columns], constants [N]) of N readers: W[n] read at (stages[n], positions[n]).

        Attention is causal, so the sweep runs on the positions up to the batch's last reader's only: batches of
        nearby positions (exact_graph sorts them) are cheaper."""
        pc, src = self.pc, self.sources
        order = torch.argsort(stages, descending=True, stable=True)
        stages, positions, readers = stages[order], positions[order], readers[order]
        N, d = readers.shape
        T = int(positions.max()) + 1 if N else 0
        g = readers.new_zeros(N, T, d)  # [N, T, d_model] ∂(read value)/∂resid[k] of the started readers
        out = readers.new_zeros(N, src.n_columns)
        constant = readers.new_zeros(N)
        started = 0
        for k in range(int(stages[0]) if N else 0, 0, -1):
            begin, started = started, int((stages >= k).sum())
            rows = torch.arange(begin, started, device=g.device)
            g[rows, positions[begin:started]] += readers[begin:started]
            if started == 0:
                continue
            gs = g[:started]  # a view: the readers that read at or above resid[k]
            m = pc.attn_entering(k)
            back = self._attention(m, gs, constant[:started]) if m is not None else None
            skip = self._mlp(k // 2 - 1, gs, out, constant, started) if k % 2 == 0 else None
            if back is not None:
                gs += back
            if skip is not None:
                gs += skip
        out[:, src.token_start : src.token_start + T] = torch.einsum("ntd,td->nt", g, pc.token_embed[:T])
        constant += torch.einsum("ntd,td->n", g, self.positional[:T])
        unsort = torch.argsort(order)
        return out[unsort], constant[unsort]

    def _attention(self, m: int, g: Tensor, constant: Tensor) -> Tensor:
        """What attention layer m passes back to its sources' residual stream (through its frozen norm):
        Σ_h pattern_hᵀ (g W_O,hᵀ) W_V,hᵀ, as two GEMMs around one batched matmul over heads."""
        pc = self.pc
        n, T, d = g.shape
        H = pc.n_heads
        constant += g.sum(1) @ pc.attn_bias[m]
        u = (g.reshape(n * T, d) @ self.W_O[m]).view(n, T, H, -1)  # [n, T, H, d_head]
        d_head = u.shape[-1]
        u = u.permute(2, 1, 0, 3).reshape(H, T, n * d_head)  # [H, T (destination), n·d_head]
        y = torch.bmm(pc.pattern[m, :, :T, :T].transpose(1, 2), u)  # [H, T (source), n·d_head]
        y = y.view(-1, self.group, T, n, d_head).sum(1)  # [n_kv, T, n, d_head]: query heads sharing a W_V
        y = y.permute(2, 1, 0, 3).reshape(n * T, -1)  # [n·T, n_kv·d_head]
        return self._through_norm((y @ self.W_V[m]).view(n, T, d), 2 * m)

    def _mlp(self, layer: int, g: Tensor, out: Tensor, constant: Tensor, n: int) -> Tensor | None:
        """Read MLP `layer`'s sources off g into out[:n]; return what its skip path passes back to its input."""
        pc, src, T = self.pc, self.sources, g.shape[1]
        start = src.error_start + layer * self.T
        out[:n, start : start + T] = torch.einsum("ntd,td->nt", g, self.errors[layer][:T])
        constant[:n] += torch.einsum("ntd,td->n", g, self.constants[layer][:T])
        tc = pc.transcoders.get(layer)
        if tc is None:
            return None
        slots, columns = src.columns[layer]
        within = int(torch.searchsorted(slots, T * self.decoders[layer].shape[1]))  # slots are position-major
        # [T, n, K]: per position, g against the active decoder rows there
        contribution = torch.bmm(g.transpose(0, 1), self.decoders[layer][:T].transpose(1, 2))
        out[:n, columns[:within]] = contribution.transpose(0, 1).reshape(n, -1)[:, slots[:within]]
        if tc.W_skip is None:
            return None
        return self._through_norm(g @ tc.W_skip, 2 * layer + 1)  # skip_out(x) = x W_skipᵀ

    def _through_norm(self, v: Tensor, stage: int) -> Tensor:
        """v [n, T, d] read through the frozen norm at `stage`: the raw residual stream's gradient."""
        if self.pc.center:
            v = v - v.mean(-1, keepdim=True)
        return v * self.pc.inv_scale[stage, : v.shape[1]][None, :, None]


@dataclass
class ExactGraph:
    """The dense attribution graph before pruning (node order at the top)."""

    adjacency: Tensor  # [N, N] rows = destination: selected features, errors, tokens, target
    features: Tensor  # [S, 3] int64 (layer, position, index) of the selected features
    activations: Tensor  # [S] their activations
    values: Tensor  # [S + 1] each row's value: the features' pre-activations, then the target's value
    constants: Tensor  # [S + 1] what each row reads from constants (own bias included)
    left_out: Tensor  # [S + 1] what each row reads from the active features without a row
    n_layers: int
    n_pos: int
    n_active: int  # active features in all (S of them have a row)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def error_slice(self) -> slice:
        return slice(self.n_features, self.n_features + self.n_layers * self.n_pos)

    @property
    def token_slice(self) -> slice:
        return slice(self.error_slice.stop, self.error_slice.stop + self.n_pos)

    def row_nodes(self) -> Tensor:
        """Node index of each row: the selected features, then the target (the last node)."""
        n = self.adjacency.shape[0]
        return torch.cat([torch.arange(self.n_features), torch.tensor([n - 1])])


def normalized(adjacency: Tensor) -> Tensor:
    """|A| with each row scaled to sum to 1 (rows without inputs stay 0): circuit-tracer's normalize_matrix."""
    a = adjacency.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def influence(adjacency: Tensor, seed: Tensor, max_iter: int = 1000) -> Tensor:
    """seed (Â + Â² + ...) for Â = normalized(adjacency): each node's normalized influence on the seeded rows."""
    a = normalized(adjacency)
    total, prod = torch.zeros_like(seed), seed
    for _ in range(max_iter):
        prod = prod @ a
        if not prod.any():
            return total
        total = total + prod
    raise RuntimeError("Influence did not converge: the adjacency has a cycle.")


def scores(graph: ExactGraph) -> dict[str, float]:
    """Replacement and completeness scores (circuit-tracer's compute_graph_scores) and the error share."""
    a, seed = graph.adjacency, _seed(graph)
    infl = influence(a, seed)
    tokens, errors = float(infl[graph.token_slice].sum()), float(infl[graph.error_slice].sum())
    non_error = 1 - normalized(a)[:, graph.error_slice].sum(-1)
    weight = infl + seed
    signed = signed_influence(graph)
    rows = graph.row_nodes()
    mult = torch.zeros(len(a))
    mult[rows] = _per_value(signed[rows], graph.values)
    leaves = [
        signed[graph.error_slice].abs().sum(),
        signed[graph.token_slice].abs().sum(),
        (mult[rows] * graph.constants).sum().abs(),
        (mult[rows] * graph.left_out).abs().sum(),
    ]
    leaf_total = float(sum(leaves))
    return {
        "replacement_score": tokens / (tokens + errors) if tokens + errors > 0 else 0.0,
        "completeness_score": float((non_error * weight).sum() / weight.sum()),
        "error_share": float(leaves[0]) / leaf_total if leaf_total > 0 else 0.0,
    }


def signed_influence(graph: ExactGraph) -> Tensor:
    """[N] the attribution flowing from each node to the target (interp.attribution.prune's signed influence):
    the target's is its value; a source's is Σ_dst A[dst, src] · μ_dst, μ = influence / value of the row."""
    a, rows = graph.adjacency, graph.row_nodes()
    values = torch.zeros(len(a))
    values[rows] = graph.values
    infl = torch.zeros(len(a))
    infl[-1] = graph.values[-1]
    for _ in range(graph.n_layers + 2):  # a feature feeds only layers above it: depth ≤ layers + 1
        mult = _per_value(infl, values)
        mult[-1] = 1.0
        new = mult @ a
        new[-1] = graph.values[-1]
        if torch.equal(new, infl):
            break
        infl = new
    return infl


def _per_value(influence: Tensor, values: Tensor) -> Tensor:
    """μ = influence / value, 0 where the value is 0 (a node with no value passes nothing on)."""
    return torch.where(values != 0, influence / torch.where(values != 0, values, 1.0), 0.0)


def _seed(graph: ExactGraph) -> Tensor:
    seed = torch.zeros(len(graph.adjacency))
    seed[-1] = 1.0
    return seed


def prune_masks(
    graph: ExactGraph, node_threshold: float = NODE_THRESHOLD, edge_threshold: float = EDGE_THRESHOLD
) -> tuple[Tensor, Tensor, Tensor]:
    """(node mask [N], edge mask [N, N], cumulative influence [N]): circuit-tracer's prune_graph with the node
    rule of interp.attribution.prune.kept_nodes (steps 1-3 there)."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, not {v}.")
    a, seed = graph.adjacency, _seed(graph)
    infl = influence(a, seed)
    keep = (infl >= threshold_value(infl, node_threshold)) & (infl > 0)
    keep[graph.token_slice] = True
    keep[-1] = True
    pruned = a * keep[:, None] * keep[None, :]
    edge_score = normalized(pruned) * (influence(pruned, seed) + seed)[:, None]
    edges = (edge_score >= threshold_value(edge_score[edge_score > 0], edge_threshold)) & (edge_score > 0)
    inner = slice(0, graph.token_slice.start)  # features and errors need an out-edge; features an in-edge
    features = slice(0, graph.n_features)
    while True:
        before = keep.clone()
        keep[inner] &= edges[:, inner].any(0)
        keep[features] &= edges[features].any(1)
        edges &= keep[:, None] & keep[None, :]
        if torch.equal(before, keep):
            break
    order = torch.argsort(
        infl, descending=True
    )  # cumulative influence: interp.attribution.prune.cumulative_shares
    cumulative = torch.zeros_like(infl)
    cumulative[order] = infl[order].cumsum(0) / infl.sum().clamp(min=1e-30)
    return keep, edges, cumulative


@torch.no_grad()
def exact_graph(
    pc: PromptCache,
    target: Target,
    max_feature_nodes: int | None = MAX_FEATURE_NODES,
    batch_size: int = BATCH_SIZE,
    update_interval: int = UPDATE_INTERVAL,
) -> ExactGraph:
    """The dense exact graph of `target` on the cached prompt (see top); None: every active feature gets a row."""
    if batch_size < 1 or update_interval < 1:
        raise ValueError(
            f"batch_size and update_interval must be ≥ 1, not {batch_size} and {update_interval}."
        )
    src = _Sources(pc)
    sweep = _Sweep(pc, src)
    F, C = src.n_features, src.n_columns
    S = F if max_feature_nodes is None else min(max_feature_nodes, F)
    if S < 0:
        raise ValueError(f"max_feature_nodes must be ≥ 0, not {max_feature_nodes}.")
    stage, t, reader, own_bias = pc.target_reader(target)
    device = reader.device
    store = torch.zeros(S + 1, C, device=device)  # rows: the target first, then features in visiting order
    row_constants = torch.zeros(S + 1, device=device)
    row_node = torch.zeros(S + 1, dtype=torch.int64, device=device)  # column of each row's node; target: C
    rows, constants = sweep.rows(
        torch.tensor([stage], device=device), torch.tensor([t], device=device), reader[None]
    )
    store[0], row_constants[0], row_node[0] = rows[0], constants[0] + own_bias, C
    visited = torch.zeros(F, dtype=torch.bool, device=device)
    filled = 1
    while filled < S + 1:
        if S == F:
            pending = torch.arange(F, device=device)
        else:
            estimate = _partial_influence(store[:filled], row_node[:filled], C)
            ranked = torch.argsort(estimate[:F], descending=True)
            pending = ranked[~visited[ranked]][: min(update_interval * batch_size, S + 1 - filled)]
        # rows do not depend on each other: batch a round's features by position, so each sweep is short
        pending = pending[torch.argsort(src.position[pending], stable=True)]
        for batch in pending.split(batch_size):
            layers, positions = src.layer[batch], src.position[batch]
            readers = _feature_readers(pc, layers, positions, src.index[batch])
            rows, constants = sweep.rows(2 * layers + 1, positions, readers)
            end = filled + len(batch)
            store[filled:end], row_node[filled:end] = rows, batch
            row_constants[filled:end] = constants + torch.stack(
                [pc.folded_b_enc[int(layer)][int(i)] for layer, i in zip(layers, src.index[batch])]
            )
            visited[batch] = True
            filled = end
    return _package(pc, src, target, store, row_constants, row_node)


def _feature_readers(pc: PromptCache, layers: Tensor, positions: Tensor, indices: Tensor) -> Tensor:
    """[n, d_model] the raw-stream readers of features (layer, position, index): f_enc,i through the norm."""
    out = torch.empty(len(layers), pc.resid.shape[-1], device=pc.resid.device)
    for layer in layers.unique().tolist():
        rows = (layers == layer).nonzero(as_tuple=True)[0]
        W = pc.transcoders[layer].W_enc[:, indices[rows]].T  # [n, d_model]
        out[rows] = pc.reader(2 * layer + 1, positions[rows], W)
    return out


def _partial_influence(rows: Tensor, row_node: Tensor, n_columns: int) -> Tensor:
    """[n_columns] influence on the target estimated from the rows computed so far (circuit-tracer's
    compute_partial_influences): the target seeded with 1, propagated down the computed rows."""
    a = rows.abs()
    a /= a.sum(1, keepdim=True).clamp(min=1e-8)
    prod = torch.zeros(n_columns + 1, device=rows.device)
    prod[n_columns] = 1.0
    total = torch.zeros(n_columns, device=rows.device)
    for _ in range(128):
        step = prod[row_node] @ a  # [n_columns]
        if not step.any():
            return total
        total += step
        prod = torch.cat([step, step.new_zeros(1)])
    raise RuntimeError("Partial influence did not converge.")


def _package(
    pc: PromptCache, src: _Sources, target: Target, store: Tensor, constants: Tensor, row_node: Tensor
) -> ExactGraph:
    """The dense graph over the selected features (rows sorted by node), errors, tokens and the target."""
    feature_rows = row_node[1:]
    order = torch.argsort(feature_rows)
    selected = feature_rows[order]  # columns of the selected features, ascending
    rows = torch.cat(
        [order + 1, order.new_zeros(1)]
    )  # rows of the store: the features in node order, the target
    columns = torch.cat([selected, torch.arange(src.n_features, src.n_columns, device=store.device)])
    S, n_other = len(selected), src.n_columns - src.n_features
    N = S + n_other + 1
    adjacency = torch.zeros(N, N)
    kept = store[:, columns][rows].cpu()  # [S + 1, N - 1], no copy of the whole store
    adjacency[:S, :-1] = kept[:S]
    adjacency[-1, :-1] = kept[-1]
    row_totals = store.sum(1)[rows].cpu()
    values = torch.cat(
        [
            torch.tensor(
                [
                    pc.feature_value(int(src.layer[c]), int(src.position[c]), int(src.index[c]))
                    for c in selected.tolist()
                ]
            ),
            torch.tensor([_target_value(pc, target)]),
        ]
    )
    row_constants = torch.cat([constants[1:][order], constants[:1]]).cpu()
    return ExactGraph(
        adjacency=adjacency,
        features=torch.stack([src.layer[selected], src.position[selected], src.index[selected]], 1).cpu(),
        activations=src.activation[selected].cpu(),
        values=values,
        constants=row_constants,
        left_out=row_totals - kept.sum(1),
        n_layers=pc.n_layers,
        n_pos=len(pc.tokens),
        n_active=src.n_features,
    )


def _target_value(pc: PromptCache, target: Target) -> float:
    t = target.position % len(pc.tokens)
    if isinstance(target, FeatureTarget):
        return pc.feature_value(target.layer, t, target.feature)
    return pc.logit_value(target, t)


def to_attribution_graph(
    pc: PromptCache,
    graph: ExactGraph,
    target: Target,
    config: dict,
    token_strs: Sequence[str] | None = None,
    tokenizer=None,
    node_threshold: float = NODE_THRESHOLD,
    edge_threshold: float = EDGE_THRESHOLD,
) -> AttributionGraph:
    """The pruned graph as nodes and edges (the storage and export shape); scores and influences are the unpruned
    graph's. Every kept row's incoming edges, `pruned` remainder and constants sum to its value."""
    keep, edges, cumulative = prune_masks(graph, node_threshold, edge_threshold)
    signed = signed_influence(graph)
    T, S = graph.n_pos, graph.n_features
    tokens = pc.tokens.tolist()

    def tok(t: int) -> str:
        return token_text_at(t, tokens, token_strs)

    ids: dict[int, str] = {}
    nodes: dict[str, GraphNode] = {}
    t_target = target.position % T
    for i in keep.nonzero(as_tuple=True)[0].tolist():
        if i == len(keep) - 1:
            ids[i] = "target"
            nodes["target"] = GraphNode(
                "target", "target", getattr(target, "layer", None), t_target,
                getattr(target, "feature", getattr(target, "token", None)), float(graph.values[-1]),
                label=target_label(target, t_target, tokenizer),
                stage=2 * target.layer + 1 if isinstance(target, FeatureTarget) else 2 * graph.n_layers,
            )  # fmt: skip
        elif i < S:
            layer, t, f = graph.features[i].tolist()
            key = NodeKey("feature", layer, t, f)
            ids[i] = key.id
            nodes[key.id] = GraphNode(
                key.id, "feature", layer, t, f, float(graph.values[i]), label=feature_label(layer, t, f, tok(t)),
                stage=2 * layer + 1,
            )  # fmt: skip
        elif i < graph.token_slice.start:
            layer, t = divmod(i - S, T)
            key = NodeKey("error", layer, t)
            ids[i] = key.id
            label = error_label(layer, t, tok(t), layer in pc.transcoders)
            nodes[key.id] = GraphNode(key.id, "error", layer, t, None, None, label=label)
        else:
            t = i - graph.token_slice.start
            key = NodeKey("embed", position=t)
            ids[i] = key.id
            nodes[key.id] = GraphNode(key.id, "embed", None, t, tokens[t], None, label=embed_label(t, tok(t)))
        nodes[ids[i]].influence = float(signed[i])
        nodes[ids[i]].cumulative_influence = 0.0 if i == len(keep) - 1 else float(cumulative[i])
    out: dict[tuple[str, str], float] = {}
    row_index = {**{i: i for i in range(S)}, len(keep) - 1: S}  # node -> row of values/constants/left_out
    rows, cols = edges.nonzero(as_tuple=True)
    for dst, src in zip(rows.tolist(), cols.tolist()):
        out[(ids[src], ids[dst])] = float(graph.adjacency[dst, src])
    constant_id = CONSTANT.id
    for dst, row in row_index.items():
        if dst not in ids:
            continue
        dst_id = ids[dst]
        kept = float(graph.adjacency[dst][edges[dst]].sum())
        remainder = float(graph.adjacency[dst].sum()) - kept + float(graph.left_out[row])
        if remainder != 0.0:
            key = NodeKey("pruned", feeds=dst_id)
            nodes[key.id] = GraphNode(
                key.id,
                "pruned",
                None,
                None,
                None,
                remainder,
                label=f"pruned → {nodes[dst_id].label}",
                feeds=dst_id,
            )
            out[(key.id, dst_id)] = remainder
        if float(graph.constants[row]) != 0.0:
            if constant_id not in nodes:
                nodes[constant_id] = GraphNode(constant_id, "bias", None, None, None, None, label="constants")
            out[(constant_id, dst_id)] = float(graph.constants[row])
    result = AttributionGraph(tokens, target, float(graph.values[-1]), nodes, out, config)
    result.scores = scores(graph)
    if not isinstance(target, FeatureTarget):
        result.target_prob = pc.logit_prob(target, t_target)
    return result


@torch.no_grad()
def attribute_exact(
    model,
    tokens: Tensor,  # [pos] token ids (BOS included if the model expects it)
    transcoders: Mapping[int, Transcoder],
    target: Target,
    max_feature_nodes: int | None = MAX_FEATURE_NODES,
    batch_size: int = BATCH_SIZE,
    token_strs: Sequence[str] | None = None,
    cache: PromptCache | None = None,
    tokenizer=None,
    node_threshold: float = NODE_THRESHOLD,
    edge_threshold: float = EDGE_THRESHOLD,
) -> AttributionGraph:
    """The exact attribution graph of `target` (see top), pruned by influence; scores of the unpruned graph."""
    pc = cache or PromptCache(model, tokens, transcoders)
    dense = exact_graph(pc, target, max_feature_nodes, batch_size)
    config = {
        "method": "exact",
        "max_feature_nodes": max_feature_nodes,
        "active_features": dense.n_active,
        "feature_rows": dense.n_features,
        "layers": sorted(pc.transcoders),
        "n_layers": pc.n_layers,
        "node_threshold": node_threshold,
        "edge_threshold": edge_threshold,
    }
    graph = to_attribution_graph(
        pc, dense, target, config, token_strs, tokenizer, node_threshold, edge_threshold
    )
    log.info(
        "exact graph: %d of %d active features with rows, %d nodes and %d edges kept",
        dense.n_features, dense.n_active, len(graph.nodes), len(graph.edges),
    )  # fmt: skip
    return graph
