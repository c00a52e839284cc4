"""Live: type text and see it shaded by each chosen feature's activation (BOS left out); hover a token for the
features that fire most on it, each chosen feature links to its card."""

import polars as pl
import streamlit as st

from app import components, live, loaded
from app.components import esc
from storage import queries

st.set_page_config(page_title="Live · Transcoder Atlas", layout="wide")
st.title("Live text")
N_CANDIDATES = 30  # features offered in the picker: the strongest on the text


def name(key: tuple[str, int, int], labels: dict) -> str:
    tid, layer, f = key
    label = labels.get((tid, f)) or ""
    return f"L{layer} #{f}" + (f" {label[:40]}" if label else "")


def main() -> None:
    tcs = components.transcoders_or_stop()
    model_name = st.selectbox("Model", tcs["model"].unique(maintain_order=True).to_list(), key="live_model")
    mine = tcs.filter(pl.col("model") == model_name)
    layers = st.multiselect(
        "Layers", mine["layer"].to_list(), default=mine["layer"].to_list(), key="live_layers"
    )
    k = st.slider("Features per token on hover (per layer)", 1, 10, 3, key="live_k")
    text = st.text_area("Text", "The President said that", key="live_text")
    chosen = mine.filter(pl.col("layer").is_in(layers))
    if chosen.height == 0 or not text.strip():
        st.info("Pick at least one layer and type some text.")
        st.stop()
    model = loaded.model(model_name)
    transcoders = [
        live.LiveTranscoder(tid, layer, loaded.transcoder(tid, str(created)))
        for tid, layer, created in chosen.select("transcoder_id", "layer", "created_at").iter_rows()
    ]
    run = live.encode_text(model, transcoders, text)
    per_token = live.top_per_token(run, k)[run.start :]
    candidates = live.strongest(run, N_CANDIDATES)
    keys = {(t, layer, f) for row in per_token for t, layer, f, _ in row.features}
    labels = queries.feature_labels(sorted({(t, f) for t, _, f in keys | {c[:3] for c in candidates}}))
    if len(run.tokens) == live.MAX_TOKENS:
        st.caption(f"Only the first {live.MAX_TOKENS} tokens are used.")
    if not per_token:
        st.info("The text has no tokens after BOS.")
        st.stop()

    st.subheader("Text")
    st.caption("Hover a token for the features that fire most on it (BOS, the context's start, is left out).")
    hover = [
        "; ".join(f"{name((t, layer, f), labels)} {a:.2f}" for t, layer, f, a in row.features)
        or "no feature fires"
        for row in per_token
    ]
    peak = [max((a for *_, a in row.features), default=0.0) for row in per_token]
    components.html_block(
        "<div class='atlas-live-text'>"
        + components.shaded_tokens([r.token for r in per_token], peak, max(peak) or 1.0, titles=hover)
        + "</div>"
    )

    options = [c[:3] for c in candidates]
    if "live_features" in st.session_state:  # a new text keeps only the chosen features it still offers
        st.session_state["live_features"] = [o for o in st.session_state["live_features"] if o in options]
    else:
        st.session_state["live_features"] = options[:3]
    picked = st.multiselect(
        "Features to shade the text by (the strongest on this text)",
        options,
        key="live_features",
        format_func=lambda key: name(key, labels),
    )
    if not candidates:
        st.info("No feature fires on this text.")
    for tid, layer, f in picked:
        acts = run.acts[tid][run.start :, f].tolist()
        top = max(acts, default=0.0)
        components.html_block(
            f"<div class='atlas-live-feature'>{components.feature_link(tid, f, layer, labels.get((tid, f)))} "
            f"<span style='color:grey'>max {top:.2f}</span>"
            + components.shaded_tokens([r.token for r in per_token], acts, top or 1.0)
            + "</div>"
        )
    st.caption(f"{len(per_token)} tokens; {esc(model_name)}; layers {', '.join(map(str, sorted(layers)))}.")


components.run_page(main)
