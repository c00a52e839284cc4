"""Feature card: status, statistics with the activations behind them, a labelled histogram, shaded examples that
show where their context starts, token effects, connected features and neighbours; previous/next navigation.

Deep link: `Feature_card?transcoder=<transcoder_id>&feature=<index>`; an invalid value gets a message naming
the valid range instead of a silently different card.
"""

import time

import polars as pl
import streamlit as st

from app import components, steer
from app.components import esc
from interp.quality import DEFAULTS as GOALS
from interp.quality import goal_misses
from storage import queries

t_page = time.perf_counter()
st.set_page_config(page_title="Feature card · Transcoder Atlas", layout="wide")


def read_link(ids: list[str], sizes: dict[str, int]) -> list[str]:
    """Apply a new deep link to the widgets' state; returns a message per invalid value (escaped)."""
    url = (st.query_params.get("transcoder"), st.query_params.get("feature"))
    if st.session_state.get("_card_url") == url:
        return []
    st.session_state["_card_url"] = url
    problems = []
    if url[0] in ids:
        st.session_state["card_transcoder"] = url[0]
    elif url[0] is not None:
        problems.append(
            f"The link names an unknown transcoder, {esc(url[0])}. Valid transcoders: "
            + ", ".join(esc(t) for t in ids)
            + "."
        )
    if url[1] is not None:
        tid = url[0] if url[0] in ids else st.session_state.get("card_transcoder", ids[0])
        feature = components.parse_feature(url[1], sizes[tid])
        if feature is None:
            problems.append(
                f"The link's feature, {esc(url[1])}, is not a feature of {esc(tid)}: valid features are the "
                f"whole numbers 0 to {sizes[tid] - 1:,}. Pick one below."
            )
        else:
            st.session_state["card_feature"] = feature
    return problems


def step(delta: int, d_sae: int) -> None:
    st.session_state["card_feature"] = max(0, min(d_sae - 1, st.session_state.get("card_feature", 0) + delta))


def stats_block(s: dict, flags: dict) -> None:
    n_active, n_ctx, n_tok = s.get("n_active") or 0, s.get("n_contexts"), s.get("n_tokens")
    if n_active == 0:
        st.warning(
            f"Dead feature: it never fired on the {n_tok or 0:,} held-out tokens mined, so it has no "
            "statistics or examples.",
            icon="⚫",
        )
        return
    status = flags.get("status") or ""
    if status.startswith("artifact"):
        st.warning(
            f"Flagged as an {esc(status)}: {flags['bos_share']:.0%} of its {flags['n_top']} top examples fire "
            f"on the first token after BOS, {flags['token_share']:.0%} on one token. Its label and statistics "
            "describe that position or token more than a concept.",
            icon="⚠️",
        )
    m = st.columns(5)
    m[0].metric("density", f"{s['density']:.5f}", help=f"{n_active:,} of {n_tok or 0:,} held-out tokens")
    m[1].metric("mean act", f"{s['mean_act']:.3f}", help=f"over {n_active:,} active tokens")
    m[2].metric("max act", f"{s['max_act']:.3f}")
    m[3].metric("active tokens", f"{n_active:,}")
    m[4].metric("contexts", f"{n_ctx:,}" if n_ctx is not None else "-")
    if n_active < components.FEW_ACTIVATIONS:
        st.warning(
            f"Only {n_active:,} active tokens"
            + (f" in {n_ctx:,} contexts" if n_ctx is not None else "")
            + " are behind this card: its quantiles, histogram and label are rough.",
            icon="⚠️",
        )
    left, right = st.columns(2)
    if s["hist_counts"]:
        left.caption(f"Activation histogram of its {sum(s['hist_counts']):,} active tokens")
        with left:
            components.html_block(components.histogram_svg(s["hist_edges"], s["hist_counts"]))
    if s["quantiles"]:
        right.caption(f"Activation quantiles over {n_active:,} active tokens")
        with right:
            components.html_block(
                components.value_table(
                    [(f"q{level:g}", value) for level, value in zip(s["quantile_levels"], s["quantiles"])],
                    "level",
                    "atlas-quantiles",
                )
            )


def examples_block(card: dict, s: dict) -> None:
    st.subheader("Examples")
    scale = s["max_act"] or 1.0
    kinds = list(dict.fromkeys(e["kind"] for e in card["examples"]))
    if not kinds:
        st.info("No stored examples for this feature.")
    st.caption(
        "Each window shows where it sits in its context: a grey 'start' badge is the context's first token "
        "(BOS), an ellipsis means the context goes on to the left. The underlined token is the example."
    )
    for kind in kinds:
        rows = [e for e in card["examples"] if e["kind"] == kind]
        with st.expander(f"{kind} ({len(rows)} examples)", expanded=kind == kinds[0]):
            components.html_block(
                "".join(
                    f"<div class='atlas-act'>{e['activation']:.3f} "
                    f"<span style='color:grey'>at position {e['position']} of context {e['context_id']}</span>"
                    "</div>"
                    + components.shaded_tokens(
                        e["tokens"], e["acts"], scale, e["highlight"], e["position"] - e["highlight"]
                    )
                    for e in rows
                )
            )


def links(title: str, rows: list[dict], value: str) -> None:
    st.caption(title)
    if not rows:
        st.write("—")
        return
    components.html_block(
        "<ul class='atlas-links'>"
        + "".join(
            f"<li>{components.feature_link(r['transcoder_id'], r['feature'], r['layer'], r['label'])} "
            f"<code>{esc(r.get('via', '') or '')} {r[value]:+.3f}</code></li>"
            for r in rows
        )
        + "</ul>"
    )


def main() -> None:
    tcs = components.transcoders_or_stop()
    ids = tcs["transcoder_id"].to_list()
    sizes = dict(zip(ids, tcs["d_sae"].to_list()))
    problems = read_link(ids, sizes)
    for p in problems:
        st.warning(p)

    c1, c2, c3, c4 = st.columns([6, 2, 1, 1], vertical_alignment="bottom")
    tid = c1.selectbox("Transcoder", ids, key="card_transcoder")
    d_sae = int(tcs.filter(pl.col("transcoder_id") == tid)["d_sae"][0])
    st.session_state["card_feature"] = min(st.session_state.get("card_feature", 0), d_sae - 1)
    current = st.session_state["card_feature"]
    c3.button("◀ prev", key="card_prev", on_click=step, args=(-1, d_sae), disabled=current <= 0)
    c4.button("next ▶", key="card_next", on_click=step, args=(1, d_sae), disabled=current >= d_sae - 1)
    feature = int(c2.number_input(f"Feature (0–{d_sae - 1:,})", 0, d_sae - 1, key="card_feature"))
    if problems:
        st.stop()  # the link stays as given until a widget changes; then the widgets' choice wins
    st.query_params.update(transcoder=tid, feature=str(feature))
    st.session_state["_card_url"] = (tid, str(feature))

    t0 = time.perf_counter()
    card = queries.feature_card(tid, feature)
    query_s = time.perf_counter() - t0
    if card is None:
        st.info(
            f"Feature {feature} of {esc(tid)} has no statistics yet (materialize the `features` asset: "
            "`make atlas`)."
        )
        st.stop()
    s = card["stats"]
    status = card["flags"].get("status") or ""
    badge = (
        f" <span class='atlas-badge' style='font-size:55%;background:#777;color:#fff;border-radius:4px;"
        f"padding:1px 6px;vertical-align:middle'>{esc(status)}</span>"
        if status
        else ""
    )
    components.html_block(
        f"<h2 class='atlas-card-title'>L{s['layer']} #{feature} "
        f"<span class='atlas-label'>{esc(s['label'] or '')}</span>{badge}</h2>"
        f"<div style='color:grey'>{esc(tid)}</div>"
    )
    tc_metrics = tcs.filter(pl.col("transcoder_id") == tid).row(0, named=True)
    quality = components.ce_recovered_text(tc_metrics)
    if quality:
        st.caption(
            f"Transcoder quality: {esc(quality)} (spliced alone into the model; goals on Home).",
            help="CE recovered = (ablated - spliced) / (ablated - clean) loss; the interval is a bootstrap over the "
            "held-out contexts.",
        )
    misses = goal_misses(tc_metrics)
    if misses:
        st.caption(
            f"⚠️ This feature's transcoder misses a quality goal ({esc('; '.join(misses))}): read its features with "
            "that in mind (see Home).",
            help=f"An FVU above {GOALS.goal_max_fvu:g} means the transcoder explains under "
            f"{1 - GOALS.goal_max_fvu:.0%} of its MLP's output variance.",
        )
    stats_block(s, card["flags"])
    if s.get("n_active"):
        examples_block(card, s)

    st.subheader("Token effects")
    for col, kind, title in zip(
        st.columns(3),
        ["deembed", "logit_top", "logit_bottom"],
        ["De-embedding (input tokens)", "Promotes", "Suppresses"],
    ):
        col.caption(title)
        with col:
            components.html_block(
                components.value_table(
                    [(components.show_token(t), v) for t, v in card["token_effects"].get(kind, [])],
                    "token",
                    f"atlas-fx-{kind}",
                )
            )

    tc_row = tcs.filter(pl.col("transcoder_id") == tid).row(0, named=True)
    steer.try_feature(tc_row["model"], tid, s["layer"], feature, str(tc_row["created_at"]), s["max_act"])

    st.subheader("Connected features")
    up, down, nb = st.columns(3)
    with up:
        links("Upstream (inputs)", card["upstream"], "weight")
    with down:
        links("Downstream (reads this feature)", card["downstream"], "weight")
    with nb:
        links("Nearest neighbours (decoder cosine)", card["neighbors"], "cosine")
    st.caption(
        f"Card rendered in {1000 * (time.perf_counter() - t_page):.0f} ms (database {1000 * query_s:.0f} ms)",
        help="Server-side time of this page run; the browser draws it after that.",
    )


components.run_page(main)
