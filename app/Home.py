"""Overview: which transcoders exist, how well each imitates its MLP (goals flagged), how training went, and what
produced them."""

import polars as pl
import streamlit as st

from app import components
from interp.quality import DEFAULTS as GOALS
from interp.quality import goal_misses, mlp_matters
from storage import queries

st.set_page_config(page_title="Transcoder Atlas", layout="wide")
st.title("Transcoder Atlas")

SUMMARY = [
    "layer",
    "architecture",
    "d_sae",
    "l0",
    "fvu",
    "ce_recovered",
    "ce_recovered_95",
    "delta_ce_ablated",
    "kl",
    "dead_frac",
]


def main() -> None:
    tc = components.transcoders_or_stop()
    counts = queries.table_counts()
    cols = st.columns(5)
    for col, name in zip(cols, ["transcoders", "features", "feature_examples", "feature_edges", "graphs"]):
        col.metric(name, f"{counts.get(name, 0):,}")

    st.header("Transcoders")
    rows = tc.to_dicts()
    table = tc.with_columns(
        delta_ce_ablated=pl.col("ce_ablated") - pl.col("ce_clean"),
        ce_recovered_95=pl.Series([components.ce_recovered_interval(r) for r in rows], dtype=pl.Utf8),
        mlp_matters=pl.Series([mlp_matters(r) for r in rows], dtype=pl.Boolean),
        goals=pl.Series(["; ".join(goal_misses(r)) or ("met" if r["fvu"] is not None else "") for r in rows]),
    )
    st.dataframe(
        table.select(*SUMMARY, "mlp_matters", "gate_passed", "goals"),
        key="transcoders_table",
        hide_index=True,
        width="stretch",
        column_config={
            "fvu": st.column_config.NumberColumn(format="%.3f"),
            "ce_recovered": st.column_config.NumberColumn(format="%.3f"),
            "ce_recovered_95": st.column_config.TextColumn(
                "CE recovered 95%",
                help="Bootstrap 95% interval over the held-out contexts (interp.evals.bootstrap_intervals); "
                "empty for an evaluation stored before intervals",
            ),
            "delta_ce_ablated": st.column_config.NumberColumn(
                "ΔCE ablated", format="%.3f", help="Loss increase when the MLP is mean-ablated (nats)"
            ),
            "kl": st.column_config.NumberColumn(format="%.3f"),
            "l0": st.column_config.NumberColumn(format="%.1f"),
            "dead_frac": st.column_config.NumberColumn("dead", format="percent"),
            "goals": st.column_config.TextColumn("goals missed", width="large"),
        },
    )
    missed = [(r["layer"], goal_misses(r)) for r in rows]
    missed = [(layer, m) for layer, m in missed if m]
    st.caption(
        f"Goals on layers whose MLP matters (ΔCE mean-ablated ≥ {GOALS.matters_delta_ce:g} nats): CE recovered ≥ "
        f"{GOALS.goal_ce_recovered:.2f}, L0 ≤ {GOALS.goal_l0:g}, dead ≤ {GOALS.goal_dead_frac:.0%}. FVU above "
        f"{GOALS.goal_max_fvu:g} is flagged on every layer (interp/quality.py)."
    )
    for layer, m in missed:
        st.warning(f"Layer {layer}: " + "; ".join(components.esc(x) for x in m), icon="⚠️")
    with st.expander("All transcoder columns"):
        st.dataframe(tc, key="transcoders_full", hide_index=True, width="stretch")

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
        st.dataframe(splice, key="splice_table", hide_index=True, width="stretch")

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
        st.dataframe(corpus, key="corpus_table", hide_index=True, width="stretch")
    if shards.height:
        st.dataframe(shards, key="shards_table", hide_index=True, width="stretch")
    for row in queries.lineage():
        label = f"{row['transcoder_id']}  (model {row['model']}, layer {row['layer']})"
        with st.expander(components.esc(label)):
            st.caption("Weights")
            st.code(str(row["weights_path"]), language=None)
            st.json(row["config"], expanded=False)


components.run_page(main)
