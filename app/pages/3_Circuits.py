"""Circuits: pick a stored attribution graph, see it (feature nodes link to their cards) and its top paths."""

import streamlit as st

from app import components
from app.circuits import graph_svg, node_text, top_paths
from storage import queries

st.set_page_config(page_title="Circuits · Transcoder Atlas", layout="wide")
st.title("Circuits")


def main() -> None:
    components.transcoders_or_stop()

    graphs = queries.graphs()
    if graphs.height == 0:
        st.info("No attribution graphs stored yet. Materialize the circuits assets (`make atlas`).")
        st.stop()
    ids = graphs["graph_id"].to_list()
    if st.query_params.get("graph") in ids and "graph" not in st.session_state:
        st.session_state["graph"] = st.query_params["graph"]
    prompts = dict(zip(ids, graphs["prompt"]))
    graph_id = st.selectbox("Graph", ids, key="graph", format_func=lambda g: f"{g}: {prompts[g][:60]!r}")
    st.query_params["graph"] = graph_id

    g = queries.graph(graph_id)
    row, nodes, edges = g["graph"], g["nodes"], g["edges"]
    components.html_block(
        f"<div class='atlas-prompt'><b>Prompt</b> <code>{components.esc(row['prompt'])}</code><br>"
        f"<b>Target</b> <code>{components.esc(row['target'])}</code> = {row['target_value'] or 0:.4f} · "
        f"{nodes.height} nodes, {edges.height} edges</div>"
    )
    components.html_block(f"<div style='overflow-x:auto'>{graph_svg(nodes, edges, g['token_strs'])}</div>")

    st.subheader("Top paths")
    k = st.slider("Paths", 1, 50, 10, key="n_paths")
    by_id = {n["node_id"]: n for n in nodes.to_dicts()}

    def node_html(node_id: str) -> str:
        n = by_id.get(node_id, {"kind": "?", "label": node_id})
        if n["kind"] == "feature" and n.get("transcoder_id"):
            return components.feature_link(n["transcoder_id"], n["feature"], n["layer"], n["feature_label"])
        return components.esc(node_text(n) if n["kind"] != "?" else node_id)

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
