"""Feature browser: filter by layer, density, label text and "fires on token X"; every row links to its card."""

import streamlit as st

from app import components
from storage import queries

st.set_page_config(page_title="Features · Transcoder Atlas", layout="wide")
st.title("Features")
components.transcoders_or_stop()

c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
layers = c1.multiselect("Layers", queries.layers(), key="layers")
density = c2.slider("Density", 0.0, 1.0, (0.0, 1.0), step=0.001, format="%.3f", key="density")
label = c3.text_input("Label contains", key="label")
token = c4.text_input(
    "Fires on token", key="token", help="A token string, e.g. ' the' or 'ing' (case-insensitive)"
)
order = st.selectbox("Sort by", queries.FEATURE_SORTS, index=1, key="order")
limit = st.number_input("Rows", 10, 5000, 500, step=100, key="limit")

rows = queries.search_features(layers, density, label, token, order, int(limit))
st.caption(
    f"{rows.height} features (sorted by {order}, descending; click a column header to re-sort, "
    "select a row to open its card)"
)
if rows.height == 0:
    st.info("No feature matches these filters.")
    st.stop()
columns = ["layer", "feature", "label", "density", "mean_act", "max_act", "transcoder_id"]
if token.strip():
    columns.insert(3, "token_act")
event = st.dataframe(
    rows.select(columns),
    key="features_table",
    hide_index=True,
    on_select="rerun",
    selection_mode="single-row",
    column_config={"density": st.column_config.NumberColumn(format="%.5f")},
)
if event.selection.rows:  # a selected row opens its card
    picked = rows.row(event.selection.rows[0], named=True)
    st.switch_page(
        "pages/2_Feature_card.py",
        query_params={"transcoder": picked["transcoder_id"], "feature": str(picked["feature"])},
    )
