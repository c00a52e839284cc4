"""Live: type text and see which features of which layers fire on each token, with links to their cards."""

import polars as pl
import streamlit as st

from app import components, live
from storage import queries

st.set_page_config(page_title="Live · Transcoder Atlas", layout="wide")
st.title("Live text")
tcs = components.transcoders_or_stop()
model_name = st.selectbox("Model", tcs["model"].unique(maintain_order=True).to_list(), key="live_model")
mine = tcs.filter(pl.col("model") == model_name)
layers = st.multiselect("Layers", mine["layer"].to_list(), default=mine["layer"].to_list(), key="live_layers")
k = st.slider("Features per token and layer", 1, 10, 3, key="live_k")
text = st.text_area("Text", "The President said that", key="live_text")


@st.cache_resource(show_spinner="Loading the model and transcoders (once)...")
def load(model_name: str, transcoders: tuple[tuple[str, int], ...], trained_at: tuple[str, ...]):
    """Cached per model, transcoder set and training time (a retrained transcoder reloads)."""
    return live.load(model_name, list(transcoders))


chosen = [(t, layer) for t, layer in mine.select("transcoder_id", "layer").iter_rows() if layer in layers]
if not chosen or not text.strip():
    st.info("Pick at least one layer and type some text.")
    st.stop()
trained_at = tuple(str(t) for t in mine.filter(pl.col("layer").is_in(layers))["created_at"])
model, transcoders = load(model_name, tuple(chosen), trained_at)
firings = live.fire(model, transcoders, text, k)
labels = queries.feature_labels([(t, f) for row in firings for t, _, f, _ in row.features])
if len(firings) == live.MAX_TOKENS:
    st.caption(f"Only the first {live.MAX_TOKENS} tokens are shown.")

cols = sorted({(t.layer, t.transcoder_id) for t in transcoders})
head = "".join(f"<th>L{layer}</th>" for layer, _ in cols)
body = []
for row in firings:
    cells = []
    for _layer, tid in cols:
        feats = [
            f"{components.feature_link(t, f, layer, labels.get((t, f)))} <code>{a:.2f}</code>"
            for t, layer, f, a in row.features
            if t == tid
        ]
        cells.append("<td>" + "<br>".join(feats) + "</td>")
    token = components.esc(components.show_token(row.token))
    body.append(
        f"<tr><td>{row.position}</td><td class='atlas-tok'><code>{token}</code></td>{''.join(cells)}</tr>"
    )
components.html_block(
    f"<table class='atlas-live'><tr><th>pos</th><th>token</th>{head}</tr>{''.join(body)}</table>"
)
