"""Overview: which transcoders exist, how well each imitates its MLP, how training went, and what produced them."""

import streamlit as st

from app import components
from storage import queries

st.set_page_config(page_title="Transcoder Atlas", layout="wide")
st.title("Transcoder Atlas")
tc = components.transcoders_or_stop()

counts = queries.table_counts()
cols = st.columns(5)
for col, name in zip(cols, ["transcoders", "features", "feature_examples", "feature_edges", "graphs"]):
    col.metric(name, f"{counts.get(name, 0):,}")

st.header("Transcoders")
st.dataframe(tc, key="transcoders_table", hide_index=True)
evaluated = tc.filter(tc["ce_recovered"].is_not_null())
if evaluated.height:
    st.subheader("Metrics per layer")
    for col, metric in zip(st.columns(3), ["ce_recovered", "l0", "fvu"]):
        col.caption(metric)
        col.bar_chart(evaluated.select("layer", metric), x="layer", y=metric, height=220)
else:
    st.info("No transcoder has been evaluated yet (materialize `transcoder_metrics`).")

splice = queries.splice_metrics()
if splice.height:
    st.subheader("All layers spliced at once")
    st.dataframe(splice, key="splice_table", hide_index=True)

curves = queries.training_curves()
if curves.height:
    st.header("Training curves")
    metric = st.selectbox("Curve", ["fvu", "l0", "loss", "mse", "dead_frac", "lr"], key="curve_metric")
    st.line_chart(
        curves.select("tokens", metric, "transcoder_id"), x="tokens", y=metric, color="transcoder_id"
    )

st.header("Lineage")
st.caption("Corpus contexts -> activation shards -> transcoders (each with its full training config)")
corpus, shards = queries.corpus_summary(), queries.activation_summary()
if corpus.height:
    st.dataframe(corpus, key="corpus_table", hide_index=True)
if shards.height:
    st.dataframe(shards, key="shards_table", hide_index=True)
for row in queries.lineage():
    with st.expander(f"{row['transcoder_id']}  (model {row['model']}, layer {row['layer']})"):
        st.write(f"Weights: `{row['weights_path']}`")
        st.json(row["config"], expanded=False)
