"""Input-invariant token effects of transcoder features (docs/features.md).

  de-embedding  f_enc,i . W_E[t]   which input tokens drive feature i directly through the embedding
                                   (meaningful for early layers; the norm before the MLP is a constant scale)
  logit effect  f_dec,i . W_U[:, t] which next tokens feature i's output promotes (top) or suppresses (bottom);
                                   W_U already holds the final norm weight (compatibility mode), and the final
                                   norm's 1/rms is treated as a constant scale

Both are [d_sae, d_vocab] products, computed in feature blocks so memory stays block x d_vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TokenEffects:
    """Top tokens per feature: token_id and value, each [d_sae, k]."""

    token_id: Tensor
    value: Tensor


def top_tokens(
    rows: Tensor,  # [d_sae, d_model] one direction per feature
    unembed: Tensor,  # [d_model, d_vocab]
    k: int,
    largest: bool = True,
    block: int = 1024,
) -> TokenEffects:
    """The k tokens with the largest (or smallest) rows @ unembed for every feature, in feature blocks."""
    ids, vals = [], []
    for i in range(0, rows.shape[0], block):
        scores = rows[i : i + block].float() @ unembed.float()  # [block, d_vocab]
        v, t = scores.topk(min(k, scores.shape[1]), dim=1, largest=largest)
        ids.append(t)
        vals.append(v)
    return TokenEffects(torch.cat(ids), torch.cat(vals))


def deembedding(W_enc: Tensor, W_E: Tensor, k: int) -> TokenEffects:
    """W_enc [d_in, d_sae], W_E [d_vocab, d_model] -> top k tokens by f_enc . W_E[t]."""
    return top_tokens(W_enc.T, W_E.T, k)


def logit_effects(W_dec: Tensor, W_U: Tensor, k: int) -> tuple[TokenEffects, TokenEffects]:
    """W_dec [d_sae, d_out], W_U [d_model, d_vocab] -> (top k promoted, top k suppressed (most negative first))."""
    return top_tokens(W_dec, W_U, k), top_tokens(W_dec, W_U, k, largest=False)
