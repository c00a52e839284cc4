"""The prompt cache: what the frozen linear decomposition needs from one clean forward pass.

The residual stream is indexed by *stage*: stage 2m is the input of attention layer m, 2l+1 the input of MLP l,
2·n_layers the final norm's input. A *reader* is a vector w [d_model] applied to the raw residual stream at one
position and stage, the norm's 1/rms folded into w.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from interp.attribution.targets import FeatureTarget, LogitTarget, Target, check_target
from interp.model import parallel_blocks
from interp.transcoder import Transcoder


def context_length(model) -> int | None:
    """The model's context length (positions it has embeddings for), if it says."""
    return getattr(model.cfg, "n_ctx", None)


class PromptCache:
    """What the linear decomposition needs from one clean forward pass; residual stream indexed by stage."""

    @torch.no_grad()
    def __init__(self, model, tokens: Tensor, transcoders: Mapping[int, Transcoder]):
        cfg = model.cfg
        n = cfg.n_layers
        n_ctx = context_length(model)
        if n_ctx is not None and len(tokens) > n_ctx:
            raise ValueError(
                f"The prompt is {len(tokens)} tokens, longer than the model's context of {n_ctx}; shorten it."
            )
        self.n_layers, self.n_heads = n, cfg.n_heads
        self.center = getattr(cfg, "normalization_type", "RMS") in (
            "LN",
            "LNPre",
        )  # LayerNorm subtracts the mean
        self.tokens = tokens  # [pos]
        self.transcoders = dict(transcoders)
        self.parallel = parallel_blocks(model)
        mid = "hook_resid_pre" if self.parallel else "hook_resid_mid"  # what MLP l reads
        resid_names, scale_names = [], []
        for layer in range(n):
            resid_names += [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.{mid}"]
            scale_names += [f"blocks.{layer}.ln1.hook_scale", f"blocks.{layer}.ln2.hook_scale"]
        wanted = set(resid_names + scale_names + [f"blocks.{n - 1}.hook_resid_post", "ln_final.hook_scale"])
        wanted.add("hook_embed")
        for m in range(n):
            wanted |= {
                f"blocks.{m}.{h}" for h in ("ln1.hook_normalized", "attn.hook_pattern", "hook_mlp_out")
            }
        wanted |= {f"blocks.{layer}.ln2.hook_normalized" for layer in self.transcoders}
        logits, cache = model.run_with_cache(tokens[None], names_filter=lambda name: name in wanted)
        self.logits = logits[0]  # [pos, d_vocab]

        def stack(names: list[str]) -> Tensor:
            return torch.stack([cache[name][0] for name in names])

        self.resid = stack(resid_names + [f"blocks.{n - 1}.hook_resid_post"])  # [2n+1, pos, d_model]
        # [pos, d_model] the token embeddings alone; resid[0] less these is the positional embedding (GPT-2)
        self.token_embed = cache["hook_embed"][0]
        self.inv_scale = 1 / stack(scale_names + ["ln_final.hook_scale"])[..., 0]  # [2n+1, pos]
        self.x1 = stack([f"blocks.{m}.ln1.hook_normalized" for m in range(n)])  # [n, pos, d_model]
        self.pattern = stack([f"blocks.{m}.attn.hook_pattern" for m in range(n)])  # [n, n_heads, pos, pos]
        self.mlp_out = stack([f"blocks.{m}.hook_mlp_out" for m in range(n)])  # [n, pos, d_model]
        # W_V per key/value head: query heads share them under grouped-query attention (SmolLM2: 9 heads, 3 W_V)
        self.W_V = model.W_V  # [n, n_kv_heads, d_model, d_head]
        self.W_O = model.W_O  # [n, n_heads, d_head, d_model]
        group = self.n_heads // self.W_V.shape[1]
        # [n_heads] the W_V of each query head
        self.kv_head = torch.arange(self.n_heads, device=self.W_V.device) // group
        # [n, pos, n_heads, d_head] each head's values x1 W_V, without the value bias (a bias node of its own)
        self.v = torch.einsum("msd,mkde->mske", self.x1, self.W_V)[:, :, self.kv_head]
        self.attn_bias = _attn_bias(model, self.W_O)  # [n, d_model]
        self.W_U, self.b_U = model.W_U, model.b_U  # [d_model, d_vocab], [d_vocab]
        self.x2, self.z, self.y_hat, self.skip = {}, {}, {}, {}
        # layer -> [d_sae] encoder biases with the input centering folded in: b_enc − b_pre W_enc
        self.folded_b_enc = {layer: tc.b_enc - tc.b_pre @ tc.W_enc for layer, tc in self.transcoders.items()}
        # each layer's active features per position, padded with zeros to the most active at any position
        self.active_index, self.active_z = {}, {}  # layer -> [pos, K] int64, [pos, K]
        for layer, tc in self.transcoders.items():
            x = cache[f"blocks.{layer}.ln2.hook_normalized"][0]  # [pos, d_model]
            self.x2[layer] = x
            z = self.z[layer] = tc.encode(x)  # [pos, d_sae]
            active_z, active_index = z.topk(int((z > 0).sum(-1).max()), dim=-1)
            self.active_index[layer], self.active_z[layer] = active_index, active_z
            self.y_hat[layer] = tc.decode_sparse(active_z, active_index, x)  # [pos, d_model] = decode(z, x)
            self.skip[layer] = None if tc.W_skip is None else tc.skip_out(x)  # [pos, d_model]

    def attn_layers_below(self, stage: int) -> int:
        """How many attention layers (0, 1, ...) have their output in resid[stage]."""
        return stage // 2 if self.parallel else (stage + 1) // 2

    def attn_entering(self, k: int) -> int | None:
        """The attention layer whose output is added between resid[k-1] and resid[k], if any."""
        m = self.attn_layers_below(k) - 1
        return m if m >= 0 and self.attn_layers_below(k - 1) == m else None

    def reader(self, stage: int, position: int | Tensor, v: Tensor) -> Tensor:
        """Vector on the raw residual stream that reads v [d_model] through the (frozen) norm at stage/position;
        or, with positions [N], the readers of v [N, d_model], row n at positions[n]."""
        if self.center:
            v = v - v.mean(-1, keepdim=True)
        return v * self.inv_scale[stage, position][..., None]

    def target_reader(self, target: Target) -> tuple[int, int, Tensor, float]:
        """(stage, position, reader [d_model], bias): the target's value is reader · resid[stage][position] + bias."""
        check_target(target, len(self.tokens), self.transcoders)
        t = target.position % len(self.tokens)
        if isinstance(target, FeatureTarget):
            stage = 2 * target.layer + 1
            v = self.transcoders[target.layer].W_enc[:, target.feature]
            return stage, t, self.reader(stage, t, v), self.b_enc(target.layer, target.feature)
        stage, v, bias = 2 * self.n_layers, self.W_U[:, target.token], self.b_U[target.token]
        if target.other is not None:
            v, bias = v - self.W_U[:, target.other], bias - self.b_U[target.other]
        return stage, t, self.reader(stage, t, v.detach()), float(bias)

    def feature_value(self, layer: int, position: int, feature: int) -> float:
        """Pre-activation of a transcoder feature (independent of the decomposition: straight from the encoder)."""
        tc = self.transcoders[layer]
        return float(self.x2[layer][position] @ tc.W_enc[:, feature]) + self.b_enc(layer, feature)

    def b_enc(self, layer: int, feature: int) -> float:
        """A feature's encoder bias with the transcoder's input centering folded in: b_enc,i − b_pre · f_enc,i."""
        return float(self.folded_b_enc[layer][feature])

    def logit_value(self, target: LogitTarget, position: int) -> float:
        out = self.logits[position, target.token]
        if target.other is not None:
            out = out - self.logits[position, target.other]
        return float(out)

    def logit_prob(self, target: LogitTarget, position: int) -> float:
        """The model's probability of the target's (first) token at `position`."""
        return float(self.logits[position].float().softmax(-1)[target.token])


def _attn_bias(model, W_O: Tensor) -> Tensor:
    """Constant output of each attention layer: b_O + Σ_h b_V,h W_O,h (patterns sum to 1). [n_layers, d_model]"""
    n, d = W_O.shape[0], W_O.shape[-1]
    try:
        b_O = model.b_O  # [n, d_model]
    except (AttributeError, TypeError):  # Llama-style attention has no biases (the bridge returns None)
        b_O = None
    try:
        b_V = model.b_V  # [n, n_kv_heads, d_head]
    except (AttributeError, TypeError):
        b_V = None
    out = torch.zeros(n, d, device=W_O.device) if b_O is None else b_O.clone()
    if b_V is not None:
        b_V = b_V.repeat_interleave(W_O.shape[1] // b_V.shape[1], dim=1)  # [n, n_heads, d_head]
        out += torch.einsum("mhe,mhed->md", b_V, W_O)
    return out
