"""Rendering helpers shared by the pages: escaping, token shading, links to feature cards, the missing-data stop.

Every string that came from a corpus, a tokenizer or a label goes through `esc` before it reaches HTML or
markdown: html.escape first (so `<script>` shows as text, `&lt;script&gt;` in the page source), then the
characters markdown or Streamlit's LaTeX would interpret become numeric entities.
"""

from __future__ import annotations

import html
from urllib.parse import quote

import streamlit as st

from storage import queries

_MARKDOWN_SPECIALS = "\\`*_{}[]()#+-.!|~$:"


def esc(text: object) -> str:
    """`text` safe to put inside HTML or markdown: tags, attributes and markdown syntax render as plain text."""
    return "".join(
        html.escape(c, quote=True) if c in "&<>\"'" else f"&#{ord(c)};" if c in _MARKDOWN_SPECIALS else c
        for c in str(text)
    )


def show_token(token: str) -> str:
    """Make whitespace visible: newline as a return arrow, tab as an arrow, empty as a middle dot."""
    return token.replace("\n", "\u21b5").replace("\t", "\u2192") or "\u00b7"


def card_url(transcoder_id: str, feature: int) -> str:
    """Relative deep link to a feature card (works from any page of the app)."""
    return f"Feature_card?transcoder={quote(transcoder_id, safe='')}&feature={int(feature)}"


def feature_link(transcoder_id: str, feature: int, layer: int | None, label: str | None = None) -> str:
    """HTML anchor 'L<layer> #<feature>' to the card, followed by its escaped label."""
    name = f"L{layer} #{feature}" if layer is not None else f"{transcoder_id} #{feature}"
    text = f'<a href="{esc(card_url(transcoder_id, feature))}" target="_self">{esc(name)}</a>'
    return text + (f" <span class='atlas-label'>{esc(label)}</span>" if label else "")


def shaded_tokens(tokens: list[str], acts: list[float], scale: float, highlight: int | None = None) -> str:
    """One line of tokens, each shaded by its activation / scale, the value on hover (title attribute)."""
    scale = scale if scale and scale > 0 else 1.0
    spans = []
    for i, (tok, act) in enumerate(zip(tokens, acts)):
        alpha = max(0.0, min(1.0, (act or 0.0) / scale))
        border = "border-bottom:2px solid #333;" if i == highlight else ""
        spans.append(
            f'<span class="atlas-tok" title="{act:.3f}" '
            f'style="background:rgba(255,120,0,{alpha:.2f});{border}">{esc(show_token(tok))}</span>'
        )
    return (
        '<div class="atlas-example" style="font-family:monospace;white-space:pre-wrap;line-height:1.8">'
        + "".join(spans)
        + "</div>"
    )


def html_block(markup: str) -> None:
    """Render trusted markup built from escaped pieces (the only place pages allow HTML)."""
    st.markdown(markup, unsafe_allow_html=True)


def require_database() -> None:
    """Stop the page with a helpful message when the atlas has not been built yet."""
    try:
        problem = queries.database_ready()
    except Exception as e:  # a database from another version, a corrupt file, a lock held too long
        problem = f"The atlas database cannot be read: {e}"
    if problem:
        st.info(problem)
        st.stop()
