"""Decomposition of readers along the residual stream at their positions (one step of the greedy search).

w · resid[stage][t] splits exactly into the embedding, each active feature of every transcoder layer below the read
(z_i (f_dec,i · w)), each layer's error (the whole MLP output where a layer has no transcoder, and at BOS),
decoder/attention biases, one skip term per transcoder layer with a skip path ((W_skip x) · w), and one term per
(attention layer, head, source position). `decompose_many` splits a batch of readers at once (one step's frontier):
the attention terms of all of them come from three batched products instead of three small ones per reader.
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
    ov: Tensor  # [M, n_heads, d_model] W_V W_O w per head (to build attention readers)
    skip_layer: Tensor  # [S] int64 transcoder layers with a skip path below the read
    skip_w: Tensor  # [S] their contributions (W_skip x) · w
    leaves: dict[NodeKey, float]  # leaf node -> contribution (embed, errors, biases)

    # [F + M·H·(t+1) + S + 1]: features, attention entries, skip paths, embedding
    def candidates(self) -> Tensor:
        embed = torch.tensor([next(iter(self.leaves.values()))], device=self.feat_w.device)
        return torch.cat([self.feat_w, self.attn.flatten(), self.skip_w, embed])

    def total(self) -> float:
        return float(self.feat_w.sum() + self.attn.sum() + self.skip_w.sum()) + sum(self.leaves.values())


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
) -> list[_Decomposition]:
    """`decompose` of N readers: W[n] read at (stages[n], positions[n])."""
    n_readers = len(stages)
    ts = torch.tensor(positions, device=W.device)  # [N]

    def dots(rows: Tensor) -> list[float]:  # [N, d_model] -> row n . reader n, for each n
        return (rows * W).sum(-1).tolist()

    leaves: list[dict[NodeKey, float]] = [
        {NodeKey("embed", position=t): v} for t, v in zip(positions, dots(pc.resid[0, ts]))
    ]  # first entry: the embedding (see candidates())
    # per reader: (layer, active feature indices, their contributions) and (layer, skip contribution)
    feats: list[list[tuple[int, Tensor, Tensor]]] = [[] for _ in range(n_readers)]
    skips: list[list[tuple[int, float]]] = [[] for _ in range(n_readers)]
    for layer in range(max(stages) // 2):  # MLPs whose output is already in the stream of some reader
        below = [n for n in range(n_readers) if layer < stages[n] // 2]
        tc = pc.transcoders.get(layer)
        mlp = dots(pc.mlp_out[layer, ts])
        if tc is None:
            for n in below:
                leaves[n][NodeKey("error", layer, positions[n])] = mlp[n]
            continue
        err, dec_bias = dots(pc.mlp_out[layer, ts] - pc.y_hat[layer][ts]), (W @ tc.b_dec).tolist()
        skip = None if pc.skip[layer] is None else dots(pc.skip[layer][ts])
        z = pc.z[layer][ts]  # [N, d_sae]
        for n in below:
            t = positions[n]
            if t == 0:  # BOS: transcoders are trained on positions 1.. only
                leaves[n][NodeKey("error", layer, t)] = mlp[n]
                continue
            active = z[n].nonzero()[:, 0]
            feats[n].append((layer, active, z[n, active] * (tc.W_dec[active] @ W[n])))
            leaves[n][NodeKey("bias", layer, t, detail="dec")] = dec_bias[n]
            leaves[n][NodeKey("error", layer, t)] = err[n]
            if skip is not None:
                skips[n].append((layer, skip[n]))
    n_attn = [pc.attn_layers_below(stage) for stage in stages]
    M, T = max(n_attn), max(positions) + 1
    bias = (W @ pc.attn_bias[:M].T).tolist()  # [N][M]
    u = torch.einsum("mhed,nd->nmhe", pc.W_O[:M], W)  # [N, M, H, d_head]
    ov = torch.einsum("mhde,nmhe->nmhd", pc.W_V[:M], u)  # [N, M, H, d_model]
    vals = torch.einsum("msd,nmhd->nmhs", pc.x1[:M, :T], ov)  # [N, M, H, T]
    pattern = pc.pattern[:M, :, ts, :T].permute(2, 0, 1, 3)  # [N, M, H, T]: row t of each reader
    attn = pattern * vals
    out = []
    empty = torch.zeros(0, dtype=torch.int64, device=W.device)
    for n in range(n_readers):
        m, t = n_attn[n], positions[n]
        for layer in range(m):
            if bias[n][layer] != 0.0:
                leaves[n][NodeKey("bias", layer, t, detail="attn")] = bias[n][layer]
        f = feats[n]
        out.append(
            _Decomposition(
                torch.cat([torch.full_like(i, layer) for layer, i, _ in f]) if f else empty,
                torch.cat([i for _, i, _ in f]) if f else empty,
                torch.cat([v for _, _, v in f]) if f else torch.zeros(0, device=W.device),
                attn[n, :m, :, : t + 1],
                ov[n, :m],
                torch.tensor([layer for layer, _ in skips[n]], dtype=torch.int64, device=W.device),
                torch.tensor([v for _, v in skips[n]], dtype=W.dtype, device=W.device),
                leaves[n],
            )
        )
    return out
