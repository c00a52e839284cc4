"""Input-invariant feature connections: which upstream transcoder features write into each downstream one.

Dunefsky et al. (2024) §4: with every norm treated as a constant scale, the weight from feature i of the
transcoder at layer l to feature j of the transcoder at layer l' > l is

    via 'resid'      f_dec,i^(l) · f_enc,j^(l')                        (the residual stream, directly)
    via 'attn.m.h'   f_dec,i^(l) W_V^(m,h) W_O^(m,h) f_enc,j^(l')      (head h of attention layer m, l < m ≤ l')

(l < m < l' in models with parallel attention and MLP blocks, whose MLP l' does not read attention layer l')

(row-vector convention: a residual vector r moves through a head as r W_V W_O). GQA: query head h uses the
key/value head h // (n_heads / n_kv_heads). For every downstream feature and every `via`, the top-k upstream
features by |weight| over all upstream transcoders are kept.

Algorithm, per downstream transcoder (layer l') and `via`:
  1. Split the downstream features into blocks of `block` columns; right factor R = W_enc^(l') (resid) or
     W_O^(m,h) W_enc^(l') (attn) for that block: [d_model or d_head, block].
  2. For every upstream transcoder allowed for the `via` (l < l' or l < m) and every block of `block` upstream
     features: left factor L = W_dec (resid) or W_dec W_V^(m,h) (attn): [block, d_model or d_head];
     scores = (L R)ᵀ: [block_dst, block_src].
  3. Merge the scores into the running top-k of each downstream feature (by |weight|).
Working memory is O(block² + block·k), independent of d_sae; only the output (d_sae × k per via) grows with d_sae.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from interp.transcoder import Transcoder

log = logging.getLogger(__name__)


def ov_weights(model) -> tuple[Tensor, Tensor]:
    """(W_V expanded to query heads [n_layers, n_heads, d_model, d_head], W_O [n_layers, n_heads, d_head, d_model])."""
    W_V, W_O = model.W_V, model.W_O
    group = W_O.shape[1] // W_V.shape[1]  # query heads per key/value head
    return W_V.repeat_interleave(group, dim=1), W_O


@dataclass(frozen=True)
class TopEdges:
    """The top-k upstream features of every feature of one downstream transcoder, through one `via`."""

    via: str  # 'resid' or 'attn.<layer>.<head>'
    dst_layer: int
    src_layer: Tensor  # [d_sae_dst, k] int64, upstream transcoder layer
    src_feature: Tensor  # [d_sae_dst, k] int64
    weight: Tensor  # [d_sae_dst, k] float32, sorted by |weight| descending


def upstream(dst_layer: int, src_layers: list[int], max_gap: int | None = None) -> list[int]:
    """The transcoder layers whose features may write into `dst_layer`: below it, at most `max_gap` layers below."""
    return [s for s in src_layers if s < dst_layer and (max_gap is None or dst_layer - s <= max_gap)]


def vias(
    dst_layer: int,
    src_layers: list[int],
    heads: bool,
    n_heads: int,
    parallel: bool = False,
    max_gap: int | None = None,
) -> list[tuple[str, int | None, int | None]]:
    """(via, attention layer, head) for every path from an upstream transcoder into `dst_layer`."""
    above = upstream(dst_layer, src_layers, max_gap)
    if not above:
        return []
    out: list[tuple[str, int | None, int | None]] = [("resid", None, None)]
    if heads:
        # the attention layers whose output MLP dst_layer reads: up to dst_layer, or dst_layer - 1 if parallel
        last = dst_layer - 1 if parallel else dst_layer
        out += [(f"attn.{m}.{h}", m, h) for m in range(min(above) + 1, last + 1) for h in range(n_heads)]
    return out


def _merge_topk(best_w: Tensor, best_i: Tensor, scores: Tensor, offset: int, k: int) -> tuple[Tensor, Tensor]:
    """Running top-k by |weight| along the last axis: best [B_dst, k'] merged with scores [B_dst, B_src].

    The block's own top-k is taken first, so only [B_dst, 2k] values are ever concatenated.
    """
    top = scores.abs().topk(min(k, scores.shape[1]), dim=1).indices  # [B_dst, k]
    w = torch.cat([best_w, scores.gather(1, top)], dim=1)
    i = torch.cat([best_i, top + offset], dim=1)
    keep = w.abs().topk(min(k, w.shape[1]), dim=1).indices
    return w.gather(1, keep), i.gather(1, keep)


def top_upstream(
    lefts: list[tuple[int, Tensor]],  # (src layer, [d_sae_src, r]) with r = d_model or d_head
    right: Tensor,  # [r, d_sae_dst]
    k: int,
    block: int,
    left_map: Tensor | None = None,  # [d_model, r]: lefts are W_dec and get multiplied by this block by block
) -> tuple[Tensor, Tensor, Tensor]:
    """Blockwise top-k of (left @ right) over all upstream rows for every downstream column.

    Returns (src_layer, src_feature, weight), each [d_sae_dst, k].
    """
    d_dst = right.shape[1]
    offsets, total = [], 0
    for _, left in lefts:
        offsets.append(total)
        total += left.shape[0]
    k = min(k, total)
    out_w = torch.empty(d_dst, k, dtype=torch.float32)
    out_i = torch.empty(d_dst, k, dtype=torch.int64)
    for d0 in range(0, d_dst, block):
        r_blk = right[:, d0 : d0 + block]  # [r, B_dst]
        best_w = torch.empty(r_blk.shape[1], 0, dtype=right.dtype, device=right.device)
        best_i = torch.empty(r_blk.shape[1], 0, dtype=torch.int64, device=right.device)
        for (_, left), offset in zip(lefts, offsets):
            for s0 in range(0, left.shape[0], block):
                l_blk = left[s0 : s0 + block]  # [B_src, d_model]
                if left_map is not None:
                    l_blk = l_blk @ left_map  # [B_src, d_head]
                scores = r_blk.T @ l_blk.T  # [B_dst, B_src]
                best_w, best_i = _merge_topk(best_w, best_i, scores, offset + s0, k)
        out_w[d0 : d0 + block] = best_w.float().cpu()
        out_i[d0 : d0 + block] = best_i.cpu()
    bounds = torch.tensor(offsets[1:] + [total])
    which = torch.bucketize(out_i, bounds, right=True)  # [d_dst, k] index into lefts
    src_layer = torch.tensor([layer for layer, _ in lefts])[which]
    src_feature = out_i - torch.tensor(offsets)[which]
    return src_layer, src_feature, out_w


@torch.no_grad()
def feature_edges(
    transcoders: Mapping[int, Transcoder],
    W_V: Tensor,  # [n_layers, n_heads, d_model, d_head], query heads (see ov_weights)
    W_O: Tensor,  # [n_layers, n_heads, d_head, d_model]
    k: int = 8,
    heads: bool = True,
    block: int = 2048,
    parallel: bool = False,  # attention and MLP read the same block input (see interp.model.parallel_blocks)
    max_gap: int | None = None,  # only upstream transcoders at most this many layers below (None: all)
) -> Iterator[TopEdges]:
    """Top-k upstream features of every feature of every transcoder, through the residual stream and each head.

    Norms are treated as constant scales (the weights are folded into W_V and W_enc in compatibility mode).
    Transcoders with a b_pre are fine: only W_enc and W_dec enter. With `max_gap`, the work is linear in the
    number of layers instead of cubic (every head of every layer between every pair).
    """
    layers = sorted(transcoders)
    n_heads = W_O.shape[1]
    jobs = [(dst, via) for dst in layers for via in vias(dst, layers, heads, n_heads, parallel, max_gap)]
    for dst, (name, m, h) in tqdm(jobs, desc="feature_edges", disable=len(jobs) < 8):
        W_enc = transcoders[dst].W_enc  # [d_model, d_sae_dst]
        near = upstream(dst, layers, max_gap)
        if m is None:
            lefts = [(src, transcoders[src].W_dec) for src in near]
            right, left_map = W_enc, None
        else:
            lefts = [(src, transcoders[src].W_dec) for src in near if src < m]
            right = W_O[m, h].to(W_enc) @ W_enc  # [d_head, d_sae_dst]
            left_map = W_V[m, h].to(W_enc)  # [d_model, d_head]
        src_layer, src_feature, weight = top_upstream(lefts, right, k, block, left_map)
        yield TopEdges(name, dst, src_layer, src_feature, weight)
