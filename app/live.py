"""Live text for the app: run the model on typed text and read which transcoder features fire on each token.

tokens -> model forward up to the deepest transcoder layer, caching `blocks.L.ln2.hook_normalized`
       -> each transcoder encodes its layer's x        # [pos, d_in] -> z [pos, d_sae]
       -> top-k active features per token and layer
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.model import load_model, mlp_hooks, resolve_device
from interp.transcoder import Transcoder
from storage import layout
from storage.transcoders import load_transcoder

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


def load(model_name: str, transcoders: list[tuple[str, int]], device: str | None = None):
    """The model (cache dir: $ATLAS_HOME/models) and its transcoders, given as (transcoder_id, layer) pairs."""
    device = resolve_device(device)
    model = load_model(model_name, device=device, cache_dir=layout.models_dir())
    loaded = [
        LiveTranscoder(tid, layer, load_transcoder(tid, device=device).eval()) for tid, layer in transcoders
    ]
    return model, loaded


@torch.no_grad()
def fire(model, transcoders: list[LiveTranscoder], text: str, k: int = 5) -> list[TokenFiring]:
    """Per token of `text` (BOS first), the k strongest active features of every transcoder."""
    tokens = model.to_tokens(text)[:, :MAX_TOKENS]  # [1, pos]
    hooks = {mlp_hooks(t.layer)[0] for t in transcoders}
    _, cache = model.run_with_cache(
        tokens, names_filter=lambda name: name in hooks, stop_at_layer=1 + max(t.layer for t in transcoders)
    )
    ids = tokens[0].tolist()
    per_token: list[list[tuple[str, int, int, float]]] = [[] for _ in ids]
    for t in transcoders:
        x = cache[mlp_hooks(t.layer)[0]][0].to(t.module.W_enc.dtype)  # [pos, d_in]
        z = t.module.encode(x)  # [pos, d_sae]
        vals, idx = z.topk(min(k, z.shape[-1]), dim=-1)  # [pos, k]
        for pos in range(len(ids)):
            per_token[pos] += [
                (t.transcoder_id, t.layer, int(f), float(v)) for v, f in zip(vals[pos], idx[pos]) if v > 0
            ]
    return [
        TokenFiring(pos, model.tokenizer.decode([tok]), feats)
        for pos, (tok, feats) in enumerate(zip(ids, per_token))
    ]
