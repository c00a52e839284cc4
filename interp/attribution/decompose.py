"""Decomposition of readers along the residual stream at their positions (one step of the greedy search).

w · resid[stage][t] splits exactly into the embedding, each active feature of every transcoder layer below the read
(z_i (f_dec,i · w)), each layer's error (the whole MLP output where a layer has no transcoder, and at BOS),
decoder/attention biases, one skip term per transcoder layer with a skip path ((W_skip x) · w), and one term per
(attention layer, head, source position). `decompose_many` splits a batch of readers at once (one step's frontier):
the attention terms of all of them come from two batched products: u = W_O w for every head below a reader, then
u against the prompt's cached value vectors x W_V (PromptCache.v), so no reader needs its own W_V W_O w. Readers
that will not be expanded (the search's last frontier) can skip those products (`heads=False`): their heads'
terms then come as one sum, the read value minus every other term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from interp.attribution.cache import PromptCache
from interp.attribution.graph import NodeKey


@dataclass
class _Decomposition:
    feat_layer: Tensor  # [F] int64
    feat_index: Tensor  # [F] int64
    feat_w: Tensor  # [F] contributions of active features at the read position
    attn: Tensor  # [M, n_heads, t+1] contributions of each head from each source position
    u: Tensor  # [M, n_heads, d_head] W_O w per head: head (m, h) reads W_V[m, h] u[m, h] (attention readers)
    skip_layer: Tensor  # [S] int64 transcoder layers with a skip path below the read
    skip_w: Tensor  # [S] their contributions (W_skip x) · w
    leaves: dict[NodeKey, float]  # leaf node -> contribution (embed, errors, biases)
    heads_total: float = 0.0  # decomposed with heads=False (attn and u empty): the heads' terms, summed

    # [F + M·H·(t+1) + S + 1]: features, attention entries, skip paths, embedding
    def candidates(self) -> Tensor:
        embed = torch.tensor([next(iter(self.leaves.values()))], device=self.feat_w.device)
        return torch.cat([self.feat_w, self.attn.flatten(), self.skip_w, embed])

    def total(self) -> float:
        terms = self.feat_w.sum() + self.attn.sum() + self.skip_w.sum()
        return float(terms) + self.heads_total + sum(self.leaves.values())


@torch.no_grad()
def decompose(pc: PromptCache, stage: int, t: int, w: Tensor) -> _Decomposition:
    """Split w · resid[stage][t] into the contributions of every upstream component (they sum to it exactly)."""
    return decompose_many(pc, [stage], [t], w[None])[0]


@torch.no_grad()
def decompose_many(
    pc: PromptCache,
    stages: Sequence[int],
    positions: Sequence[int],
    W: Tensor,  # [N, d_model] readers
    heads: bool = True,
) -> list[_Decomposition]:
    """`decompose` of N readers: W[n] read at (stages[n], positions[n]); with heads=False, each reader's head
    terms as one sum (`heads_total`) instead of one term per head and source."""
    n_readers = len(stages)
    ts = torch.tensor(positions, device=W.device)  # [N]

    def dots(rows: Tensor) -> list[float]:  # [N, d_model] -> row n . reader n, for each n
        return (rows * W).sum(-1).tolist()

    leaves: list[dict[NodeKey, float]] = [
        {NodeKey("embed", position=t): v} for t, v in zip(positions, dots(pc.resid[0, ts]))
    ]  # first entry: the embedding (see candidates())
    # every reader's active features, layer by layer: [N, K_layer] blocks of layer, index, contribution and whether
    # the reader sees it (its MLP is below the read, not at BOS, active)
    feat_layer, feat_index, feat_w, feat_seen = [], [], [], []
    skips: list[list[tuple[int, float]]] = [[] for _ in range(n_readers)]
    mlps_below = torch.tensor(stages, device=W.device) // 2  # [N] MLP layers whose output a reader sees
    mlp_total = [0.0] * n_readers  # what every MLP below adds to each read (heads=False needs it)
    not_bos = ts != 0  # [N]: at BOS an MLP is an error node (transcoders are trained on positions 1.. only)
    for layer in range(max(stages) // 2):  # MLPs whose output is already in the stream of some reader
        below = [n for n in range(n_readers) if layer < stages[n] // 2]
        tc = pc.transcoders.get(layer)
        mlp = dots(pc.mlp_out[layer, ts])
        for n in below:
            mlp_total[n] += mlp[n]
        if tc is None:
            for n in below:
                leaves[n][NodeKey("error", layer, positions[n])] = mlp[n]
            continue
        err, dec_bias = dots(pc.mlp_out[layer, ts] - pc.y_hat[layer][ts]), (W @ tc.b_dec).tolist()
        skip = None if pc.skip[layer] is None else dots(pc.skip[layer][ts])
        index, z = pc.active_index[layer][ts], pc.active_z[layer][ts]  # [N, K]
        seen = (layer < mlps_below) & not_bos  # [N] readers that see this layer's features
        feat_index.append(index)
        feat_layer.append(torch.full_like(index, layer))
        feat_seen.append((z > 0) & seen[:, None])
        # [N, K] z_i (f_dec,i · w) for the readers that see them; F.embedding gathers the decoder rows
        # [n, K, d_model] several times faster than W_dec[index]
        contribution = torch.zeros_like(z)
        rows = torch.nn.functional.embedding(index[seen], tc.W_dec)
        contribution[seen] = z[seen] * (rows * W[seen, None]).sum(-1)
        feat_w.append(contribution)
        for n in below:
            t = positions[n]
            if t == 0:  # BOS
                leaves[n][NodeKey("error", layer, t)] = mlp[n]
                continue
            leaves[n][NodeKey("bias", layer, t, detail="dec")] = dec_bias[n]
            leaves[n][NodeKey("error", layer, t)] = err[n]
            if skip is not None:
                skips[n].append((layer, skip[n]))

    def joined(blocks: list[Tensor], dtype: torch.dtype) -> Tensor:  # [N, K_layer] blocks -> [N, sum K]
        return torch.cat(blocks, 1) if blocks else torch.zeros(n_readers, 0, dtype=dtype, device=W.device)

    feat_layer, feat_index = joined(feat_layer, torch.int64), joined(feat_index, torch.int64)
    feat_w, feat_seen = joined(feat_w, W.dtype), joined(feat_seen, torch.bool)
    n_attn = [pc.attn_layers_below(stage) for stage in stages]
    M, T = max(n_attn), max(positions) + 1
    bias = (W @ pc.attn_bias[:M].T).tolist()  # [N][M]
    if heads:
        u = torch.einsum("mhed,nd->nmhe", pc.W_O[:M], W)  # [N, M, H, d_head]
        vals = torch.einsum("mshe,nmhe->nmhs", pc.v[:M, :T], u)  # [N, M, H, T]: x1 W_V W_O w
        pattern = pc.pattern[:M, :, ts, :T].permute(2, 0, 1, 3)  # [N, M, H, T]: row t of each reader
        attn, heads_total = pattern * vals, [0.0] * n_readers
    else:  # the read value less the embedding, the MLPs and the attention biases
        u = W.new_zeros(n_readers, 0, pc.n_heads, pc.W_O.shape[2])  # [N, 0, H, d_head]: no head term itemized
        attn = W.new_zeros(n_readers, 0, pc.n_heads, T)  # [N, 0, H, T]
        read = dots(pc.resid[torch.tensor(stages, device=W.device), ts])
        heads_total = [
            read[n] - next(iter(leaves[n].values())) - mlp_total[n] - sum(bias[n][: n_attn[n]])
            for n in range(n_readers)
        ]
    out = []
    for n in range(n_readers):
        m, t = n_attn[n], positions[n]
        for layer in range(m):
            if bias[n][layer] != 0.0:
                leaves[n][NodeKey("bias", layer, t, detail="attn")] = bias[n][layer]
        seen = feat_seen[n]
        out.append(
            _Decomposition(
                feat_layer[n, seen],
                feat_index[n, seen],
                feat_w[n, seen],
                attn[n, :m, :, : t + 1],
                u[n, :m],
                torch.tensor([layer for layer, _ in skips[n]], dtype=torch.int64, device=W.device),
                torch.tensor([v for _, v in skips[n]], dtype=W.dtype, device=W.device),
                leaves[n],
                heads_total[n],
            )
        )
    return out
