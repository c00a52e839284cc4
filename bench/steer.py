"""Generation with feature edits against plain greedy generation of the same model, in the same run.

Both loops are `interp.interventions.generate` (greedy, no KV cache) on the same prompts for N_NEW tokens each:
plain with no edits, edited with one 'add' edit at every position on the transcoder of a middle layer (the
atlas's current one when the atlas is built, else a freshly initialized one of the default shape: the speed of an
edit does not depend on training). Ratio = edited tokens/s / plain tokens/s (goal >= 0.8). Also printed, not a
goal: the same edit with attention frozen (an unedited pass per token for the patterns, so about 0.5).
"""

from __future__ import annotations

import time

import torch

from interp import interventions as iv
from interp.model import DEFAULT_MODEL, load_model
from interp.transcoder import Transcoder, TranscoderConfig
from storage import layout

PROMPTS = [
    "The President said that the nation",
    "Call me Ishmael. Some years ago",
    "To be, or not to be, that is",
]
N_NEW = 8
LAYER = 15


def _transcoder(model) -> tuple[Transcoder, str]:
    try:
        from storage.transcoders import list_transcoders, load_transcoder

        rows = list_transcoders(DEFAULT_MODEL).to_dicts()
        row = min(rows, key=lambda r: abs(r["layer"] - LAYER))
        return load_transcoder(row["transcoder_id"]).eval().requires_grad_(False), row["transcoder_id"]
    except Exception:  # no atlas built: a fresh transcoder of the default shape runs the same arithmetic
        d = model.cfg.d_model
        cfg = TranscoderConfig.expanded(d, d, layer=LAYER)
        name = f"untrained L{LAYER} {cfg.architecture}-{cfg.d_sae}"
        return Transcoder(cfg).eval().requires_grad_(False), name


def _tokens_per_s(model, prompts, tcs, edits, freeze=False) -> float:
    n, t0 = 0, time.perf_counter()
    for tokens in prompts:
        n += len(iv.generate(model, tokens, tcs, edits, N_NEW, freeze_attention=freeze))
    return n / (time.perf_counter() - t0)


def main() -> None:
    model = load_model(DEFAULT_MODEL, cache_dir=layout.models_dir())
    tc, name = _transcoder(model)
    layer = tc.cfg.layer if tc.cfg.layer >= 0 else LAYER
    tcs = {layer: tc}
    edits = [iv.Edit(layer, 7, "add", 8.0)]
    prompts = [model.to_tokens(p)[0] for p in PROMPTS]
    with torch.inference_mode():
        iv.generate(model, prompts[0], tcs, edits, 2)  # warm-up
        plain = _tokens_per_s(model, prompts, {}, [])
        print(f"   plain generation: {plain:,.2f} tokens/s", flush=True)
        edited = _tokens_per_s(model, prompts, tcs, edits)
        print(f"   with an edit (attention live): {edited:,.2f} tokens/s", flush=True)
        frozen = _tokens_per_s(model, prompts, tcs, edits, freeze=True)
        print(f"   with an edit (attention frozen): {frozen:,.2f} tokens/s", flush=True)
        plain_again = _tokens_per_s(model, prompts, {}, [])  # the machine's drift during the run
    base = (plain + plain_again) / 2
    print(f"   transcoder: {name}; {len(PROMPTS)} prompts x {N_NEW} new tokens, greedy, no KV cache")
    print(f"   plain generation again at the end: {plain_again:,.2f} tokens/s")
    print(f"   ratio edited / plain: {edited / base:.2f} (goal >= 0.8); frozen / plain {frozen / base:.2f}")
