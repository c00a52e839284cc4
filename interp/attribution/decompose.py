"""Decomposition of one reader along the residual stream at its position (one step of the greedy search).

w · resid[stage][t] splits exactly into the embedding, each active feature of every transcoder layer below the read
(z_i (f_dec,i · w)), each layer's error (the whole MLP output where a layer has no transcoder, and at BOS),
decoder/attention biases, one skip term per transcoder layer with a skip path ((W_skip x) · w), and one term per
(attention layer, head, source position).
"""

from __future__ import annotations

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

    def candidates(
        self,
    ) -> Tensor:  # [F + M·H·(t+1) + S + 1]: features, attention entries, skip paths, embedding
        embed = torch.tensor([next(iter(self.leaves.values()))], device=self.feat_w.device)
        return torch.cat([self.feat_w, self.attn.flatten(), self.skip_w, embed])

    def total(self) -> float:
        return float(self.feat_w.sum() + self.attn.sum() + self.skip_w.sum()) + sum(self.leaves.values())


@torch.no_grad()
def decompose(pc: PromptCache, stage: int, t: int, w: Tensor) -> _Decomposition:
    """Split w · resid[stage][t] into the contributions of every upstream component (they sum to it exactly)."""
    leaves = {
        NodeKey("embed", position=t): float(pc.resid[0, t] @ w)
    }  # first entry: the embedding (see candidates())
    layers, indices, weights, skip_layer, skip_w = [], [], [], [], []
    for layer in range(stage // 2):  # MLPs whose output is already in the stream
        tc = pc.transcoders.get(layer)
        if tc is None or t == 0:  # no transcoder, or BOS (transcoders are trained on positions 1.. only)
            leaves[NodeKey("error", layer, t)] = float(pc.mlp_out[layer, t] @ w)
            continue
        z = pc.z[layer][t]  # [d_sae]
        active = z.nonzero()[:, 0]
        layers.append(torch.full_like(active, layer))
        indices.append(active)
        weights.append(z[active] * (tc.W_dec[active] @ w))
        leaves[NodeKey("bias", layer, t, detail="dec")] = float(tc.b_dec @ w)
        leaves[NodeKey("error", layer, t)] = float((pc.mlp_out[layer, t] - pc.y_hat[layer][t]) @ w)
        if pc.skip[layer] is not None:
            skip_layer.append(layer)
            skip_w.append(float(pc.skip[layer][t] @ w))
    n_attn = pc.attn_layers_below(stage)
    for m in range(n_attn):
        b = float(pc.attn_bias[m] @ w)
        if b != 0.0:
            leaves[NodeKey("bias", m, t, detail="attn")] = b
    u = torch.einsum("mhed,d->mhe", pc.W_O[:n_attn], w)  # [M, H, d_head]
    ov = torch.einsum("mhde,mhe->mhd", pc.W_V[:n_attn], u)  # [M, H, d_model]
    vals = torch.einsum("msd,mhd->mhs", pc.x1[:n_attn, : t + 1], ov)  # [M, H, t+1]
    attn = pc.pattern[:n_attn, :, t, : t + 1] * vals
    empty = torch.zeros(0, dtype=torch.int64, device=w.device)
    return _Decomposition(
        torch.cat(layers) if layers else empty,
        torch.cat(indices) if indices else empty,
        torch.cat(weights) if weights else torch.zeros(0, device=w.device),
        attn,
        ov,
        torch.tensor(skip_layer, dtype=torch.int64, device=w.device),
        torch.tensor(skip_w, dtype=w.dtype, device=w.device),
        leaves,
    )
