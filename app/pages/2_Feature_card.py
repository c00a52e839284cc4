"""Feature card: statistics, activation histogram, shaded examples, token effects, connected features, neighbours.

Deep link: `Feature_card?transcoder=<transcoder_id>&feature=<index>`.
"""

import time

import polars as pl
import streamlit as st

from app import components
from storage import queries

t_page = time.perf_counter()
st.set_page_config(page_title="Feature card · Transcoder Atlas", layout="wide")
tcs = components.transcoders_or_stop()
ids = tcs["transcoder_id"].to_list()
url = (st.query_params.get("transcoder"), st.query_params.get("feature"))
if st.session_state.get("_card_url") != url:  # a new deep link wins over the widgets' last state
    st.session_state["_card_url"] = url
    if url[0] in ids:
        st.session_state["card_transcoder"] = url[0]
    elif url[0] is not None:
        st.warning(f"Unknown transcoder {url[0]!r} in the link; pick one below.")
    if url[1] is not None and url[1].isdigit():
        st.session_state["card_feature"] = int(url[1])

c1, c2 = st.columns([3, 1])
tid = c1.selectbox("Transcoder", ids, key="card_transcoder")
d_sae = int(tcs.filter(pl.col("transcoder_id") == tid)["d_sae"][0])
st.session_state["card_feature"] = min(st.session_state.get("card_feature", 0), d_sae - 1)
feature = int(c2.number_input("Feature", 0, d_sae - 1, key="card_feature"))
st.query_params.update(transcoder=tid, feature=str(feature))
st.session_state["_card_url"] = (tid, str(feature))

t0 = time.perf_counter()
card = queries.feature_card(tid, feature)
query_s = time.perf_counter() - t0
if card is None:
    st.info(
        f"Feature {feature} of {tid} has no statistics yet (materialize the `features` asset: `make atlas`)."
    )
    st.stop()
s = card["stats"]
components.html_block(
    f"<h2 class='atlas-card-title'>L{s['layer']} #{feature} "
    f"<span class='atlas-label'>{components.esc(s['label'] or '')}</span></h2>"
    f"<div style='color:grey'>{components.esc(tid)}</div>"
)
m = st.columns(4)
m[0].metric("density", f"{s['density']:.5f}")
m[1].metric("mean act", f"{s['mean_act']:.3f}")
m[2].metric("max act", f"{s['max_act']:.3f}")
m[3].metric("active tokens", f"{s['n_active']:,}" if s["n_active"] is not None else "-")

left, right = st.columns(2)
if s["hist_counts"]:
    left.caption("Activation histogram (active tokens)")
    with left:
        components.html_block(components.histogram_svg(s["hist_edges"], s["hist_counts"]))
if s["quantiles"]:
    right.caption("Activation quantiles")
    with right:
        components.html_block(
            components.value_table(
                [(f"q{level:g}", value) for level, value in zip(s["quantile_levels"], s["quantiles"])],
                "level",
                "atlas-quantiles",
            )
        )

st.subheader("Examples")
scale = s["max_act"] or 1.0
kinds = list(dict.fromkeys(e["kind"] for e in card["examples"]))
if not kinds:
    st.info("No stored examples for this feature.")
for kind in kinds:
    rows = [e for e in card["examples"] if e["kind"] == kind]
    with st.expander(f"{kind} ({len(rows)})", expanded=kind == kinds[0]):
        components.html_block(
            "".join(
                f"<div class='atlas-act'>{e['activation']:.3f}</div>"
                + components.shaded_tokens(e["tokens"], e["acts"], scale, e["highlight"])
                for e in rows
            )
        )

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


def links(title: str, rows: list[dict], value: str) -> None:
    st.caption(title)
    if not rows:
        st.write("—")
        return
    components.html_block(
        "<ul class='atlas-links'>"
        + "".join(
            f"<li>{components.feature_link(r['transcoder_id'], r['feature'], r['layer'], r['label'])} "
            f"<code>{components.esc(r.get('via', '') or '')} {r[value]:+.3f}</code></li>"
            for r in rows
        )
        + "</ul>"
    )


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
