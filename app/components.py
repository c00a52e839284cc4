"""Rendering helpers shared by the pages: escaping, token shading, links to feature cards, the missing-data stop.

Every string that came from a corpus, a tokenizer or a label goes through `esc` before it reaches HTML or
markdown: html.escape first (so `<script>` shows as text, `&lt;script&gt;` in the page source), then the
characters markdown or Streamlit's LaTeX would interpret become numeric entities.
"""

from __future__ import annotations

import html
import logging
import math
import re
from collections.abc import Callable
from urllib.parse import quote

import polars as pl
import streamlit as st

from storage import layout, queries

log = logging.getLogger("atlas.app")
FEW_ACTIVATIONS = 100  # fewer active tokens than this behind a statistic: the card warns it is rough

_MARKDOWN_SPECIALS = "\\`*_{}[]()#+-.!|~$:"


WORD_JOINER = "\u2060"  # invisible; breaks GFM's autolink triggers ('https://', 'www.', 'a@b.c')
_AUTOLINK = re.compile(r"(?i)(?<=:)(?=//)|(?<=\bwww)(?=\.)|(?<=@)")


def ce_recovered_interval(row: dict) -> str:
    """'[0.760, 0.840]': the stored bootstrap 95% interval of a transcoder row's CE recovered ('' without one)."""
    lo, hi = row.get("ce_recovered_lo"), row.get("ce_recovered_hi")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return ""
    return f"[{lo:.3f}, {hi:.3f}]"


def ce_recovered_text(row: dict) -> str:
    """'CE recovered 0.800, 95% interval [0.760, 0.840] over 256 contexts' (plain text: escape when rendering);
    without an interval just the value; '' when the transcoder has not been evaluated."""
    value = row.get("ce_recovered")
    if value is None:
        return ""
    interval = ce_recovered_interval(row)
    if not interval:
        return f"CE recovered {value:.3f}"
    n = row.get("n_eval_contexts")
    return f"CE recovered {value:.3f}, 95% interval {interval}" + (f" over {n:,} contexts" if n else "")


def esc(text: object) -> str:
    """`text` safe to put inside HTML or markdown: tags, attributes and markdown syntax render as plain text.

    Streamlit's markdown autolinks bare URLs even when their characters are entities, so an invisible word
    joiner goes after ':' before '//', after 'www' before '.', and after '@'.
    """
    return "".join(
        html.escape(c, quote=True) if c in "&<>\"'" else f"&#{ord(c)};" if c in _MARKDOWN_SPECIALS else c
        for c in _AUTOLINK.sub(WORD_JOINER, str(text))
    )


def show_token(token: str) -> str:
    """Make whitespace visible: newline as a return arrow, tab as an arrow, an all-space token as open boxes,
    the empty string as a middle dot."""
    shown = token.replace("\n", "\u21b5").replace("\t", "\u2192")
    if not shown:
        return "\u00b7"
    return shown if shown.strip() else shown.replace(" ", "\u2423")


def parse_feature(raw: str | None, d_sae: int) -> int | None:
    """A deep link's feature index if `raw` is a whole number in [0, d_sae), else None (no rounding, no clamping:
    '3.5', '-1', 'abc' and d_sae itself are all invalid)."""
    text = (raw or "").strip()
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value < d_sae else None


def card_url(transcoder_id: str, feature: int) -> str:
    """Relative deep link to a feature card (works from any page of the app)."""
    return f"Feature_card?transcoder={quote(transcoder_id, safe='')}&feature={int(feature)}"


def feature_link(transcoder_id: str, feature: int, layer: int | None, label: str | None = None) -> str:
    """HTML anchor 'L<layer> #<feature>' to the card, followed by its escaped label."""
    name = f"L{layer} #{feature}" if layer is not None else f"{transcoder_id} #{feature}"
    text = f'<a href="{esc(card_url(transcoder_id, feature))}" target="_self">{esc(name)}</a>'
    return text + (f" <span class='atlas-label'>{esc(label)}</span>" if label else "")


def shaded_tokens(
    tokens: list[str],
    acts: list[float],
    scale: float,
    highlight: int | None = None,
    window_start: int | None = None,
    titles: list[str] | None = None,
) -> str:
    """One line of tokens, each shaded by its activation / scale, the value on hover (title attribute).

    `window_start` says where the window sits in its context: 0 marks the first token as the context's start
    (BOS), more than 0 puts an ellipsis before it (the context goes on to the left). `titles` replace the
    hover text per token (escaped here).
    """
    scale = scale if scale and scale > 0 else 1.0
    spans = []
    if window_start is not None and window_start > 0:
        spans.append(
            f'<span class="atlas-cont" title="the context continues to the left: this window starts at '
            f'position {int(window_start)}" style="color:grey">&hellip;</span>'
        )
    for i, (tok, act) in enumerate(zip(tokens, acts)):
        alpha = max(0.0, min(1.0, (act or 0.0) / scale))
        border = "border-bottom:2px solid #333;" if i == highlight else ""
        title = esc(titles[i]) if titles is not None else f"{act:.3f}"
        text = esc(show_token(tok))
        if i == 0 and window_start == 0:  # the context's first token is BOS
            spans.append(
                f'<span class="atlas-bos" title="start of the context (BOS {esc(tok)}); activation {act:.3f}" '
                f'style="font-size:80%;color:#fff;background:#777;border-radius:3px;padding:0 3px;'
                f'margin-right:2px;{border}">start</span>'
            )
            continue
        spans.append(
            f'<span class="atlas-tok" title="{title}" '
            f'style="background:rgba(255,120,0,{alpha:.2f});{border}">{text}</span>'
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


def bin_ratio(edges: list[float]) -> float | None:
    """Width ratio hi/lo of the histogram's inner bins when they are log-spaced (None for linear or too few)."""
    inner = [(lo, hi) for lo, hi in zip(edges[1:-2], edges[2:-1]) if lo > 0]
    if not inner:
        return None
    ratios = [hi / lo for lo, hi in inner]
    mean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    return mean if max(ratios) / min(ratios) < 1.01 and mean > 1.0 else None


def histogram_svg(edges: list[float], counts: list[int], width: int = 440, height: int = 140) -> str:
    """Bars of a histogram with axes: count on y (0 and the tallest bar), activation on x at bin edges.

    Bins may be log-spaced (the miner's are): every bin gets the same width, as on a log axis, and the x labels
    are the actual edges. Each bar's range and count show on hover.
    """
    left, bottom, top_pad = 44, 34, 8
    top = max(counts, default=0) or 1
    n = max(len(counts), 1)
    bar_w = width / n
    bars = "".join(
        f'<rect x="{left + i * bar_w:.1f}" y="{top_pad + height - height * c / top:.1f}" '
        f'width="{max(bar_w - 1, 1):.1f}" height="{height * c / top:.1f}" fill="#f28e2b">'
        f"<title>{lo:.3g} to {hi:.3g}: {c:,} tokens</title></rect>"
        for i, (lo, hi, c) in enumerate(zip(edges[:-1], edges[1:], counts))
    )
    y0 = top_pad + height
    step = max(1, n // 4)
    ticks = sorted({*range(0, n + 1, step), n})
    xlabels = "".join(
        f'<line x1="{left + i * bar_w:.1f}" y1="{y0}" x2="{left + i * bar_w:.1f}" y2="{y0 + 4}" stroke="grey"/>'
        f'<text x="{left + i * bar_w:.1f}" y="{y0 + 15}" font-size="10" fill="grey" '
        f'text-anchor="{"start" if i == 0 else "end" if i == n else "middle"}">{edges[i]:.3g}</text>'
        for i in ticks
        if i < len(edges)
    )
    ratio = bin_ratio(edges)
    scale = f"log-spaced bins, each x{ratio:.2f} wider" if ratio else "bins"
    axes = (
        f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{y0}" stroke="grey"/>'
        f'<line x1="{left}" y1="{y0}" x2="{left + width}" y2="{y0}" stroke="grey"/>'
        f'<text x="{left - 4}" y="{top_pad + 8}" font-size="10" fill="grey" text-anchor="end">{top:,}</text>'
        f'<text x="{left - 4}" y="{y0}" font-size="10" fill="grey" text-anchor="end">0</text>'
        f'<text x="10" y="{top_pad + height / 2:.0f}" font-size="10" fill="grey" text-anchor="middle" '
        f'transform="rotate(-90 10 {top_pad + height / 2:.0f})">tokens</text>'
        f'<text x="{left + width / 2:.0f}" y="{y0 + 30}" font-size="10" fill="grey" text-anchor="middle">'
        f"activation ({scale})</text>"
    )
    w, h = left + width + 10, y0 + bottom + 4
    return (
        f'<svg class="atlas-hist" viewBox="0 0 {w} {h}" width="100%" style="max-width:{w}px;height:auto">'
        f"{bars}{axes}{xlabels}</svg>"
    )


def html_block(markup: str) -> None:
    """Render trusted markup built from escaped pieces (the only place pages allow HTML)."""
    st.markdown(markup, unsafe_allow_html=True)


@st.cache_data(ttl=30, show_spinner=False)
def _transcoders(path: str, version: tuple[float, ...]) -> pl.DataFrame:
    return queries.transcoders()


def db_version(path: str) -> str:
    """The snapshot readers see (storage.db publishes each committed write under a new name): a cache keyed on it
    refreshes when a write is published, not when the working copy changes."""
    from storage.db import readers

    return str(readers.published_path(path))


def friendly_error(e: BaseException) -> str:
    """One escaped line for a user about a failed page (the traceback goes to the server log only)."""
    from storage.db import errors

    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    if isinstance(e, FileNotFoundError):
        return esc(first)
    if isinstance(e, getattr(errors, "DatabaseLockedError", ())):
        return "The atlas database is busy (a materialization holds it); reload the page in a moment."
    if type(e).__module__ == errors.__name__:  # storage.db's own errors name the problem and what to do
        return esc(first)
    if type(e).__module__.startswith(("duckdb", "_duckdb", "storage")):
        return (
            "The atlas database could not be read just now; reload the page in a moment. "
            f"({esc(type(e).__name__)}: {esc(first)})"
        )
    # anything else is a bug: its message may name server paths, so only its type reaches the page
    return f"This page failed ({esc(type(e).__name__)}). The details are in the server log."


def run_page(body: Callable[[], None]) -> None:
    """Run a page's body; an exception becomes one clear message on the page and a traceback in the server log
    (st.stop / reruns pass through: they are not Exceptions)."""
    try:
        body()
    except Exception as e:
        log.exception("page failed")
        st.error(friendly_error(e))


def transcoders_or_stop() -> pl.DataFrame:
    """The transcoders with their metrics (cached until the database changes); stops the page with a helpful
    message when the atlas has not been built yet."""
    path = layout.db_path()
    try:
        tcs = _transcoders(path, db_version(path))
    except FileNotFoundError as e:
        st.info(f"{esc(str(e).split(';')[0])}. Run `make atlas` to build it (or set ATLAS_HOME).")
        st.stop()
    except Exception as e:  # a database from another version, a corrupt file, a lock held too long
        log.exception("reading the transcoders failed")
        st.error(f"{friendly_error(e)} If this persists, run `make atlas`.")
        st.stop()
    if tcs.height == 0:
        st.info(f"The atlas database {esc(path)} has no transcoders yet. Run `make atlas`.")
        st.stop()
    return tcs
