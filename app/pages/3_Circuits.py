"""Circuits: pick a stored attribution graph, read its scores, explore it (prune, zoom, hover; click a feature
for its card) and its top paths."""

import streamlit as st

from app import components
from app.circuits import graph_figure, node_text, prune_rows, top_paths
from storage import queries

st.set_page_config(page_title="Circuits · Transcoder Atlas", layout="wide")
st.title("Circuits")

METHODS = {
    "exact": "exact: every direct effect among the active features (circuit-tracer's method)",
    "greedy": "greedy: the seed paper's path search",
}
SCORE_HELP = (
    "circuit-tracer's scores of the graph before pruning: replacement = share of the tokens' influence on the target "
    "that flows through features rather than error nodes; completeness = influence-weighted share of node inputs "
    "that are not errors; error share = share of the target's absolute attribution arriving from error nodes."
)


def score(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def probability(row: dict) -> str:
    """' · p = 0.831' for a logit target whose token probability is stored, else ''."""
    return "" if row.get("target_prob") is None else f" · p = {row['target_prob']:.3f}"


FAITHFULNESS_HELP = (
    "Each of the graph's top feature nodes by |influence| zeroed, predicted change = minus the node's influence. "
    "Settings, top to bottom, thaw the graph's linear model one part at a time: replacement_model (transcoders in "
    "place of the MLPs, errors, attention patterns and norms frozen), attention_norms_frozen (the real MLPs live), "
    "attention_frozen (norms live too), nothing_frozen. Goal: sign agreement >= 0.9 and Spearman >= 0.8 with "
    "attention frozen."
)


def faithfulness(g: dict) -> None:
    """The graph's real-model faithfulness per setting, and each intervened node's predicted vs actual change."""
    summary = g["faithfulness"]
    if summary.height == 0:
        st.caption("No real-model interventions stored for this graph (re-materialize `attribution_graphs`).")
        return
    st.markdown(
        "**Faithfulness: the replacement model, then the real model** (MLPs live)", help=FAITHFULNESS_HELP
    )
    st.dataframe(summary, hide_index=True, width="content")
    with st.expander("Predicted vs actual change of the target, per node"):
        st.dataframe(g["interventions"], hide_index=True)


def main() -> None:
    components.transcoders_or_stop()

    graphs = queries.graphs()
    if graphs.height == 0:
        st.info("No attribution graphs stored yet. Materialize the circuits assets (`make atlas`).")
        st.stop()
    ids = graphs["graph_id"].to_list()
    if st.query_params.get("graph") in ids and "graph" not in st.session_state:
        st.session_state["graph"] = st.query_params["graph"]
    names = {
        r["graph_id"]: f"{r['target']} · {r['prompt'][:60]!r} · {r['method'] or '?'}"
        for r in graphs.iter_rows(named=True)
    }
    graph_id = st.selectbox("Graph", ids, key="graph", format_func=lambda g: names[g])
    st.query_params["graph"] = graph_id

    g = queries.graph(graph_id)
    row, nodes, edges = g["graph"], g["nodes"], g["edges"]
    esc = components.esc
    components.html_block(
        f"<div class='atlas-prompt'><b>Prompt</b> <code>{esc(row['prompt'])}</code><br>"
        f"<b>Target</b> <code>{esc(row['target'])}</code> = {row['target_value'] or 0:.4f}{probability(row)}<br>"
        f"<b>Method</b> <span class='atlas-graph-method'>{esc(METHODS.get(row.get('method'), row.get('method')))}"
        "</span><br>"
        f"<span class='atlas-graph-scores' title='{esc(SCORE_HELP)}'>"
        f"<b>Replacement score</b> {score(row.get('replacement_score'))} · "
        f"<b>completeness score</b> {score(row.get('completeness_score'))} · "
        f"<b>error share</b> {score(row.get('error_share'))} · "
        f"{row.get('n_nodes') or nodes.height} nodes, {row.get('n_edges') or edges.height} edges stored</span></div>"
    )
    faithfulness(g)
    left, right = st.columns([3, 1])
    threshold = left.slider(
        "Pruning: keep the nodes holding this share of the influence (circuit-tracer's node threshold)",
        0.05,
        1.0,
        1.0,
        0.05,
        key="node_threshold",
    )
    leaves = right.checkbox("Show bias and pruned-remainder nodes", False, key="show_leaves")
    shown, shown_edges = prune_rows(nodes, edges, threshold, leaves)
    st.caption(
        f"Showing {shown.height} of {nodes.height} nodes and {shown_edges.height} of {edges.height} edges."
    )
    event = st.plotly_chart(
        graph_figure(shown, shown_edges, g["token_strs"]),
        key="graph_figure",
        on_select="rerun",
        selection_mode="points",
        width="content",
        config={"scrollZoom": True, "displaylogo": False},
    )
    by_id = {n["node_id"]: n for n in nodes.to_dicts()}
    picked = [p.get("customdata") for p in (event.selection.points if event else [])]
    for node_id in picked:
        n = by_id.get(node_id if isinstance(node_id, str) else None)
        if n and n["kind"] in ("feature", "target") and n.get("transcoder_id") and n["feature"] is not None:
            st.switch_page(
                "pages/2_Feature_card.py",
                query_params={"transcoder": n["transcoder_id"], "feature": str(n["feature"])},
            )

    st.subheader("Top paths")
    k = st.slider("Paths", 1, 50, 10, key="n_paths")

    def node_html(node_id: str) -> str:
        n = by_id.get(node_id, {"kind": "?", "label": node_id})
        if n["kind"] == "feature" and n.get("transcoder_id"):
            return components.feature_link(n["transcoder_id"], n["feature"], n["layer"], n["feature_label"])
        return esc(node_text(n) if n["kind"] != "?" else node_id)

    paths = top_paths(nodes, edges, k)
    if not paths:
        st.info("Nothing flows into this graph's target.")
    components.html_block(
        "<ol class='atlas-paths'>"
        + "".join(
            f"<li><code>{attr:+.4f}</code> " + " &rarr; ".join(node_html(n) for n in path) + "</li>"
            for attr, path in paths
        )
        + "</ol>"
    )


components.run_page(main)
