"""The model side of the Steer page and of the card's "try this feature": run edits (interp.interventions) on the
shared model (app.loaded), and render the results as escaped HTML.

    prompt -> tokens (BOS first, at most MAX_PROMPT_TOKENS)
           -> greedy generation without and with the edits            # two continuations, side by side
           -> next-token distributions at the prompt's last position  # the tokens whose probability moved most
           -> for one target token: predicted (direct effects) vs actual change of its logit, per edit
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import streamlit as st
import torch

from app import components, loaded
from app.components import esc, show_token
from interp import interventions as iv
from interp.model import n_layers
from storage import layout

MAX_PROMPT_TOKENS = 128
EACH_EDIT_MAX = 8  # with more edits, predicted vs actual is shown for all of them together only


@st.cache_data(show_spinner=False)
def model_layers(model_name: str) -> int:
    return n_layers(model_name, layout.models_dir())


def check(model_name: str, layers: dict[int, dict], edits: list[iv.Edit]) -> None:
    """Check edits against the atlas before any model loads (layers: layer -> its transcoders row)."""
    sizes = {layer: SimpleNamespace(d_sae=int(row["d_sae"])) for layer, row in layers.items()}
    iv.check_edits(model_layers(model_name), sizes, edits)


def transcoders_for(layers: dict[int, dict], edits: list[iv.Edit]) -> dict[int, torch.nn.Module]:
    wanted = sorted({e.layer for e in edits})
    return {
        layer: loaded.transcoder(layers[layer]["transcoder_id"], str(layers[layer]["created_at"]))
        for layer in wanted
    }


@dataclass
class SteerResult:
    prompt: list[str]  # token strings, BOS left out
    plain: list[str]  # generated token strings without edits
    edited: list[str]  # with edits
    moved: list[iv.MovedToken]
    n_prompt_tokens: int
    cut: bool  # the prompt was longer than MAX_PROMPT_TOKENS


def steer(m, tcs, prompt: str, edits: list[iv.Edit], max_new: int, freeze: bool) -> SteerResult:
    tokens = m.to_tokens(prompt)[0]  # [pos], BOS first
    cut = len(tokens) > MAX_PROMPT_TOKENS
    tokens = tokens[:MAX_PROMPT_TOKENS]
    iv.check_edits(m.cfg.n_layers, tcs, edits, len(tokens))
    plain = iv.generate(m, tokens, tcs, [], max_new)
    edited = iv.generate(m, tokens, tcs, edits, max_new, freeze_attention=freeze)
    run = iv.run_with_edits(m, tokens, tcs, edits, freeze_attention=freeze)
    decode = m.tokenizer.decode
    return SteerResult(
        prompt=[decode([t]) for t in tokens[1:].tolist()],
        plain=[decode([t]) for t in plain.tolist()],
        edited=[decode([t]) for t in edited.tolist()],
        moved=iv.moved_tokens(run.clean_logits[-1], run.logits[-1]),
        n_prompt_tokens=len(tokens),
        cut=cut,
    )


def generation_html(prompt: list[str], new: list[str], css_class: str) -> str:
    """The prompt in grey, then the generated tokens (each escaped, whitespace kept)."""
    return (
        f"<div class='{css_class}' style='font-family:monospace;white-space:pre-wrap;line-height:1.7'>"
        f"<span class='atlas-prompt-text' style='color:grey'>{esc(''.join(prompt))}</span>"
        + "".join(f"<span class='atlas-gen' style='background:#e8f0fe'>{esc(t)}</span>" for t in new)
        + "</div>"
    )


def moved_html(moved: list[iv.MovedToken], token_str) -> str:
    rows = "".join(
        f"<tr><td><code>{esc(show_token(token_str(t.token)))}</code></td><td>{t.p_before:.3f}</td>"
        f"<td>{t.p_after:.3f}</td><td>{t.delta:+.3f}</td></tr>"
        for t in moved
    )
    return (
        "<table class='atlas-steer-moved'><tr><th>next token</th><th>p without</th><th>p with</th>"
        f"<th>change</th></tr>{rows}</table>"
    )


def effects_html(effects: list[iv.EditEffect]) -> str:
    rows = "".join(
        f"<tr><td><code>{esc(str(e.edit) if e.edit else 'all edits together')}</code></td>"
        f"<td>{e.predicted:+.3f}</td><td>{e.actual:+.3f}</td></tr>"
        for e in effects
    )
    return (
        "<table class='atlas-steer-effects'><tr><th>edit</th><th>predicted Δ logit (direct effect)</th>"
        f"<th>actual Δ logit</th></tr>{rows}</table>"
    )


def steer_url(model_name: str, edits: list[iv.Edit]) -> str:
    from urllib.parse import quote

    return f"Steer?model={quote(model_name, safe='')}&edits={quote(iv.format_edits(edits), safe='')}"


def try_feature(model_name: str, tid: str, layer: int, feature: int, created_at: str, max_act: float) -> None:
    """The card's "try this feature": typed text shaded by this feature's activation, BOS left out, and a link
    that opens the Steer page with this feature added at twice its strongest mined activation."""
    from app.live import LiveTranscoder, encode_text

    st.subheader("Try this feature")
    strength = round(2 * (max_act or 1.0), 2)
    components.html_block(
        f"<a class='atlas-steer-link' href='{esc(steer_url(model_name, [iv.Edit(layer, feature, 'add', strength)]))}'"
        f" target='_self'>Steer the model with this feature (add {strength:g})</a>"
    )
    text = st.text_input("Type text to see where this feature fires", key="card_try_text")
    if not text.strip():
        return
    m = loaded.model(model_name)
    live = encode_text(m, [LiveTranscoder(tid, layer, loaded.transcoder(tid, created_at))], text)
    acts = live.acts[tid][live.start :, feature].tolist()
    if not acts:
        st.info("The text has no tokens after BOS.")
        return
    top = max(acts)
    scale = max(top, max_act or 0.0) or 1.0
    st.caption(
        f"{len(acts)} tokens (BOS left out); max on this text {top:.3f}; shading scaled to "
        f"{scale:.3f} (the larger of that and the feature's strongest mined activation). Hover for values."
    )
    components.html_block(
        "<div class='atlas-try'>"
        + components.shaded_tokens(live.tokens[live.start :], acts, scale)
        + "</div>"
    )
