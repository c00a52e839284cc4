"""Live text for the app: run the model on typed text and read which transcoder features fire on each token.

tokens -> model forward up to the deepest transcoder layer, caching `blocks.L.ln2.hook_normalized`
       -> each transcoder encodes its layer's x        # [pos, d_in] -> z [pos, d_sae]
       -> per token the top-k active features (hover), per chosen feature its activation on every token
The BOS position is kept in `LiveText` (the model needs it) but left out of what the page shows (`start`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.model import mlp_hooks
from interp.transcoder import Transcoder

MAX_TOKENS = 256  # longer text is cut (the page says so)


@dataclass(frozen=True)
class LiveTranscoder:
    transcoder_id: str
    layer: int
    module: Transcoder


@dataclass(frozen=True)
class TokenFiring:
    position: int
    token: str
    features: list[
        tuple[str, int, int, float]
    ]  # (transcoder_id, layer, feature, activation), strongest first


@dataclass(frozen=True)
class LiveText:
    tokens: list[str]  # decoded tokens, BOS first when the model prepends one
    acts: dict[str, torch.Tensor]  # transcoder_id -> z [pos, d_sae]
    layers: dict[str, int]  # transcoder_id -> layer
    start: int  # first position to show: 1 when position 0 is BOS, else 0


@torch.no_grad()
def encode_text(model, transcoders: list[LiveTranscoder], text: str) -> LiveText:
    """Every transcoder's feature activations on every token of `text` (at most MAX_TOKENS, BOS first)."""
    tokens = model.to_tokens(text)[:, :MAX_TOKENS]  # [1, pos]
    hooks = {mlp_hooks(t.layer)[0] for t in transcoders}
    _, cache = model.run_with_cache(
        tokens, names_filter=lambda name: name in hooks, stop_at_layer=1 + max(t.layer for t in transcoders)
    )
    acts = {}
    for t in transcoders:
        x = cache[mlp_hooks(t.layer)[0]][0].to(t.module.W_enc.dtype)  # [pos, d_in]
        acts[t.transcoder_id] = t.module.encode(x).float().cpu()  # [pos, d_sae]
    ids = tokens[0].tolist()
    bos = getattr(model.tokenizer, "bos_token_id", None)
    return LiveText(
        tokens=[model.tokenizer.decode([tok]) for tok in ids],
        acts=acts,
        layers={t.transcoder_id: t.layer for t in transcoders},
        start=1 if bos is not None and ids and ids[0] == bos else 0,
    )


def top_per_token(live: LiveText, k: int) -> list[TokenFiring]:
    """Per token (BOS included), the k strongest active features of every transcoder, strongest first."""
    per_token: list[list[tuple[str, int, int, float]]] = [[] for _ in live.tokens]
    for tid, z in live.acts.items():
        vals, idx = z.topk(min(k, z.shape[-1]), dim=-1)  # [pos, k]
        for pos in range(len(live.tokens)):
            per_token[pos] += [
                (tid, live.layers[tid], int(f), float(v)) for v, f in zip(vals[pos], idx[pos]) if v > 0
            ]
    return [
        TokenFiring(pos, tok, sorted(feats, key=lambda f: -f[3]))
        for pos, (tok, feats) in enumerate(zip(live.tokens, per_token))
    ]


def strongest(live: LiveText, n: int) -> list[tuple[str, int, int, float]]:
    """The n features with the largest activation on any shown token (BOS left out): (tid, layer, feature, max)."""
    found = []
    for tid, z in live.acts.items():
        shown = z[live.start :]  # [pos', d_sae]
        if shown.numel() == 0:
            continue
        peak = shown.max(dim=0).values  # [d_sae]
        vals, idx = peak.topk(min(n, peak.numel()))
        found += [(tid, live.layers[tid], int(f), float(v)) for v, f in zip(vals, idx) if v > 0]
    return sorted(found, key=lambda f: -f[3])[:n]


def fire(model, transcoders: list[LiveTranscoder], text: str, k: int = 5) -> list[TokenFiring]:
    """Per token of `text` (BOS first), the k strongest active features of every transcoder."""
    return top_per_token(encode_text(model, transcoders, text), k)
