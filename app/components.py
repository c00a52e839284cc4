"""Rendering helpers shared by the pages: escaping, token shading, links to feature cards, the missing-data stop.

Every string that came from a corpus, a tokenizer or a label goes through `esc` before it reaches HTML or
markdown: html.escape first (so `<script>` shows as text, `&lt;script&gt;` in the page source), then the
characters markdown or Streamlit's LaTeX would interpret become numeric entities.
"""

from __future__ import annotations

import html
import os
from urllib.parse import quote

import polars as pl
import streamlit as st

from storage import layout, queries

_MARKDOWN_SPECIALS = "\\`*_{}[]()#+-.!|~$:"


def esc(text: object) -> str:
    """`text` safe to put inside HTML or markdown: tags, attributes and markdown syntax render as plain text."""
    return "".join(
        html.escape(c, quote=True) if c in "&<>\"'" else f"&#{ord(c)};" if c in _MARKDOWN_SPECIALS else c
        for c in str(text)
    )


def show_token(token: str) -> str:
    """Make whitespace visible: newline as a return arrow, tab as an arrow, an all-space token as open boxes,
    the empty string as a middle dot."""
    shown = token.replace("\n", "\u21b5").replace("\t", "\u2192")
    if not shown:
        return "\u00b7"
    return shown if shown.strip() else shown.replace(" ", "\u2423")


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


def value_table(rows: list[tuple[str, float]], name: str, css_class: str) -> str:
    """A two-column HTML table (escaped name, value) — lighter than a data frame for a dozen rows."""
    body = "".join(f"<tr><td><code>{esc(n)}</code></td><td>{v:+.3f}</td></tr>" for n, v in rows)
    return f"<table class='{css_class}'><tr><th>{esc(name)}</th><th>value</th></tr>{body}</table>"


def histogram_svg(edges: list[float], counts: list[int], width: int = 420, height: int = 140) -> str:
    """Bars of a histogram (bin edges may be log-spaced: bars are drawn per bin, range and count on hover)."""
    top = max(counts, default=0) or 1
    bar_w = width / max(len(counts), 1)
    bars = "".join(
        f'<rect x="{i * bar_w:.1f}" y="{height - height * c / top:.1f}" width="{max(bar_w - 1, 1):.1f}" '
        f'height="{height * c / top:.1f}" fill="#f28e2b"><title>{lo:.3g} to {hi:.3g}: {c}</title></rect>'
        for i, (lo, hi, c) in enumerate(zip(edges[:-1], edges[1:], counts))
    )
    axis = (
        f'<text x="0" y="{height + 14}" font-size="11" fill="grey">{edges[0]:.3g}</text>'
        f'<text x="{width}" y="{height + 14}" font-size="11" fill="grey" text-anchor="end">{edges[-1]:.3g}</text>'
    )
    return f'<svg class="atlas-hist" width="{width}" height="{height + 18}">{bars}{axis}</svg>'


def html_block(markup: str) -> None:
    """Render trusted markup built from escaped pieces (the only place pages allow HTML)."""
    st.markdown(markup, unsafe_allow_html=True)


@st.cache_data(ttl=30, show_spinner=False)
def _transcoders(path: str, version: tuple[float, ...]) -> pl.DataFrame:
    return queries.transcoders()


def _version(path: str) -> tuple[float, ...]:
    """Modification times of the database and its WAL: a write anywhere invalidates the cached table."""
    return tuple(os.path.getmtime(p) if os.path.exists(p) else 0.0 for p in (path, path + ".wal"))


def transcoders_or_stop() -> pl.DataFrame:
    """The transcoders with their metrics (cached until the database changes); stops the page with a helpful
    message when the atlas has not been built yet."""
    path = layout.db_path()
    try:
        tcs = _transcoders(path, _version(path))
    except FileNotFoundError as e:
        st.info(str(e))
        st.stop()
    except Exception as e:  # a database from another version, a corrupt file, a lock held too long
        st.info(f"The atlas database `{path}` cannot be read ({e}); run `make atlas`.")
        st.stop()
    if tcs.height == 0:
        st.info(f"The atlas database `{path}` has no transcoders yet. Run `make atlas`.")
        st.stop()
    return tcs
