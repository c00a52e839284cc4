"""Exact direct effects of every upstream component on one reader, in one backward sweep of the frozen linear
model (the faithfulness check against zero-ablations with patterns, scales and other MLP outputs frozen)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from interp.attribution.cache import PromptCache


@dataclass
class DirectEffects:
    """Every upstream component's contribution to one reader through all of the frozen linear model's paths.

    `decompose` splits a reader along the residual stream at one position and leaves attention as separate
    (head, source) terms; this pushes the reader back through every attention layer as well (patterns and norm
    scales frozen, MLP outputs constant), so a feature's entry is its whole direct effect: the residual path plus
    every path through heads at any source position, but none through another MLP. Zero-ablating the feature in
    the real model with patterns, scales and the other MLP outputs frozen changes the reader by exactly minus its
    entry. The entries sum to the reader's value.
    """

    features: dict[int, Tensor]  # layer -> [t+1, d_sae]: z_i (f_dec,i · g), zero where inactive and at BOS
    embed: Tensor  # [t+1]: each position's embedding
    # layer -> [t+1]: the transcoder's error, or the whole MLP output where the layer has no transcoder (or at BOS)
    errors: dict[int, Tensor]
    bias_and_skip: float  # decoder and attention biases, and the transcoders' skip paths (W_skip x)

    def budget(self) -> dict[str, float]:
        """The reader's value by kind of source (the values sum to it)."""

        def errors(covered: bool) -> float:
            return sum(
                float(e.sum()) for layer, e in self.errors.items() if (layer in self.features) == covered
            )

        return {
            "features": sum(float(f.sum()) for f in self.features.values()),
            "transcoder_errors": errors(True),
            "mlps_without_transcoder": errors(False),
            "embeddings": float(self.embed.sum()),
            "biases_and_skip": self.bias_and_skip,
        }

    def total(self) -> float:
        return sum(self.budget().values())


@torch.no_grad()
def direct_effects(pc: PromptCache, stage: int, t: int, w: Tensor) -> DirectEffects:
    """Exact direct effects on w · resid[stage][t] of every feature, embedding and error at positions ≤ t.

    One backward sweep of the linear map from stage 0 to `stage`: g[s] = ∂(w · resid[stage][t]) / ∂resid[k][s]
    starts as w at t; an MLP output (constant) leaves g unchanged and collects its components' shares; attention
    layer m adds, at every source s, Σ_h Σ_t' pattern[m,h,t',s] · reader(2m, s, W_V W_O g[t']). In parallel
    blocks attention m and MLP m enter together, and resid[2m+1] (what MLP m reads) equals resid[2m].
    """
    n = t + 1
    g = torch.zeros(n, w.shape[0], device=w.device, dtype=w.dtype)  # [t+1, d_model]
    g[t] = w
    features, errors, bias_and_skip = {}, {}, 0.0
    for k in range(stage, 0, -1):
        m = pc.attn_entering(k)
        if m is not None:  # attention layer m (reading resid[2m] through its norm) adds into resid[k]
            bias_and_skip += float(pc.attn_bias[m] @ g.sum(0))
            u = torch.einsum("hef,tf->hte", pc.W_O[m], g)  # [H, t+1, d_head]
            ov = torch.einsum("hde,hte->htd", pc.W_V[m, pc.kv_head], u)  # [H, t+1, d_model]
            back = torch.einsum("hts,htd->sd", pc.pattern[m, :, :n, :n], ov)  # [t+1 (source), d_model]
            if pc.center:
                back = back - back.mean(-1, keepdim=True)
            back = back * pc.inv_scale[2 * m, :n, None]
        if k % 2 == 0:  # MLP l adds into resid[k]
            layer = k // 2 - 1
            share = (pc.mlp_out[layer, :n] * g).sum(-1)  # [t+1]
            tc = pc.transcoders.get(layer)
            if tc is None:
                errors[layer] = share
            else:
                z = pc.z[layer][:n].clone()  # [t+1, d_sae]
                z[0] = 0.0  # BOS: the whole MLP output is the error (transcoders never saw position 0)
                features[layer] = z * (g @ tc.W_dec.T)
                rest = g @ tc.b_dec  # [t+1]
                if pc.skip[layer] is not None:
                    rest = rest + (pc.skip[layer][:n] * g).sum(-1)
                rest[0] = 0.0
                errors[layer] = share - features[layer].sum(-1) - rest
                bias_and_skip += float(rest.sum())
        if m is not None:
            g = g + back
    return DirectEffects(features, (pc.resid[0, :n] * g).sum(-1), errors, bias_and_skip)
