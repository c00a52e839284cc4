"""Nearest features by decoder direction: cosine of f_dec vectors, within one transcoder and across layers.

Steps: 1. unit-normalize every decoder row of the query and of each bank; 2. for blocks of query features,
multiply with each bank's rows ([block, d_sae_bank]) and keep a running top-k over banks; 3. a feature never
matches itself (same bank, same index). Memory: block x d_sae of one bank, never d_sae x d_sae.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Neighbors:
    bank: Tensor  # [d_sae, k] index into the list of banks
    feature: Tensor  # [d_sae, k]
    cosine: Tensor  # [d_sae, k], descending


def _unit(w: Tensor) -> Tensor:
    w = w.float()
    return w / w.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def decoder_neighbors(
    query: Tensor, banks: list[Tensor], self_bank: int | None, k: int, block: int = 1024
) -> Neighbors:
    """Top-k cosine neighbours of each row of query [d_sae, d] among the rows of every bank [d_sae_b, d].

    self_bank: index of the bank that is the query itself (its diagonal is excluded), or None.
    """
    q_all = _unit(query)
    units = [_unit(b) for b in banks]
    out_bank, out_feat, out_cos = [], [], []
    for i in range(0, q_all.shape[0], block):
        q = q_all[i : i + block]  # [blk, d]
        best_c = torch.full((len(q), 0), -2.0)
        best_b = torch.zeros((len(q), 0), dtype=torch.long)
        best_f = torch.zeros((len(q), 0), dtype=torch.long)
        for j, u in enumerate(units):
            cos = q @ u.T  # [blk, d_sae_b]
            if j == self_bank:
                rows = torch.arange(len(q))
                cos[rows, rows + i] = -2.0
            c, f = cos.topk(min(k, cos.shape[1]), dim=1)
            best_c = torch.cat([best_c, c], 1)
            best_f = torch.cat([best_f, f], 1)
            best_b = torch.cat([best_b, torch.full_like(f, j)], 1)
            best_c, idx = best_c.topk(min(k, best_c.shape[1]), dim=1)
            best_f, best_b = best_f.gather(1, idx), best_b.gather(1, idx)
        out_bank.append(best_b)
        out_feat.append(best_f)
        out_cos.append(best_c)
    return Neighbors(torch.cat(out_bank), torch.cat(out_feat), torch.cat(out_cos))
