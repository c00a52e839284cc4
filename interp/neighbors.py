"""Nearest features by decoder direction: cosine of f_dec vectors, within one transcoder and across layers.

Steps: 1. unit-normalize every decoder row of every bank (one bank per transcoder); 2. for each pair of banks
(a, b) with a a query bank, multiply blocks of a's rows with b's rows ([block, d_sae_b]) and keep a running top-k
per row over banks; 3. cosine is symmetric, so when b is a query bank too the same block also updates b's rows
(the top-k of each column) and the pair (b, a) is never computed: all-layers neighbours cost half the products;
4. a feature never matches itself (same bank, same index). Memory: block x d_sae of one bank, never d_sae x d_sae.
"""

from __future__ import annotations

from collections.abc import Sequence
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


class _RunningTopK:
    """Per-row top-k (cosine, bank, feature) of one query bank, merged candidate batch by candidate batch."""

    def __init__(self, n: int, k: int, n_candidates: int):
        self.k, self.width = k, min(k, n_candidates)  # rows see n_candidates (self excluded): keep width
        self.cos = torch.full((n, k), -torch.inf)  # below any cosine and the -2 of a masked self-match
        self.bank = torch.full((n, k), -1, dtype=torch.long)
        self.feature = torch.full((n, k), -1, dtype=torch.long)

    def merge(self, rows: slice, cos: Tensor, feature: Tensor, bank: int) -> None:
        """Merge candidates cos / feature [len(rows), m] from `bank` into rows `rows`."""
        c = torch.cat([self.cos[rows], cos], 1)
        f = torch.cat([self.feature[rows], feature], 1)
        b = torch.cat([self.bank[rows], torch.full_like(feature, bank)], 1)
        c, idx = c.topk(self.k, dim=1)
        self.cos[rows], self.feature[rows], self.bank[rows] = c, f.gather(1, idx), b.gather(1, idx)

    def result(self) -> Neighbors:
        w = self.width
        return Neighbors(
            self.bank[:, :w].contiguous(), self.feature[:, :w].contiguous(), self.cos[:, :w].contiguous()
        )


def decoder_neighbors(
    banks: Sequence[Tensor], queries: Sequence[int], k: int, block: int = 1024
) -> dict[int, Neighbors]:
    """{q: top-k cosine neighbours of each row of banks[q]} among the rows of every bank, for q in `queries`.

    banks: decoder matrices [d_sae_b, d], one per transcoder; a row is never its own neighbour.
    """
    if not queries:
        return {}
    units = [_unit(b) for b in banks]
    n_candidates = sum(len(u) for u in units) - 1
    best = {q: _RunningTopK(len(units[q]), k, n_candidates) for q in queries}
    for a in sorted(set(queries)):
        for b, ub in enumerate(units):
            if b in best and b < a:  # done as the pair (b, a)
                continue
            for i in range(0, len(units[a]), block):
                rows = slice(i, i + block)
                cos = units[a][rows] @ ub.T  # [blk, d_sae_b]
                if b == a:
                    r = torch.arange(cos.shape[0])
                    cos[r, r + i] = -2.0
                c, f = cos.topk(min(k, cos.shape[1]), dim=1)
                best[a].merge(rows, c, f, b)
                if b in best and b != a:  # the same products, read by column: b's neighbours among a's block
                    c, f = cos.topk(min(k, cos.shape[0]), dim=0)  # [k', d_sae_b]
                    best[b].merge(slice(None), c.T, f.T + i, a)
    return {q: best[q].result() for q in queries}
