"""Feature browser: filter by layer, density, label text, "fires on token X" and status (live, artifacts, dead);
every row links to its card."""

import streamlit as st

from app import components
from storage import layout, queries

st.set_page_config(page_title="Features · Transcoder Atlas", layout="wide")
st.title("Features")

SHOW = {
    "live": "Live features (artifacts and dead hidden)",
    "all": "All, flagged",
    "artifacts": "Artifacts only",
    "dead": "Dead only",
}
SORTS = {
    "n_contexts": "contexts it fires in",
    "density": "density",
    "max_act": "max activation",
    "mean_act": "mean activation",
    "feature": "feature index",
    "token_act": "activation on the token",
}


@st.cache_data(ttl=60, max_entries=64, show_spinner=False)
def search(args: tuple, path: str, version: tuple[float, ...]):
    """queries.search_features, cached until the database changes (a row click reruns the page)."""
    layers, density, label, token, order, limit, show = args
    return queries.search_features(list(layers), density, label, token, order, limit, show)


def main() -> None:
    components.transcoders_or_stop()
    c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
    layers = c1.multiselect("Layers", queries.layers(), key="layers")
    density = c2.slider("Density", 0.0, 1.0, (0.0, 1.0), step=0.001, format="%.3f", key="density")
    label = c3.text_input("Label contains", key="label")
    token = c4.text_input(
        "Fires on token", key="token", help="A token string, e.g. ' the' or 'ing' (case-insensitive)"
    )
    c5, c6, c7 = st.columns([3, 2, 1])
    show = c5.selectbox("Show", list(SHOW), format_func=SHOW.get, key="show")
    order = c6.selectbox("Sort by", list(SORTS), format_func=SORTS.get, key="order")
    limit = c7.number_input("Rows", 10, 5000, 500, step=100, key="limit")

    path = layout.db_path()
    args = (tuple(layers), tuple(density), label, token, order, int(limit), show)
    rows = search(args, path, components.db_version(path))
    st.caption(
        f"{rows.height} features (sorted by {SORTS[order]}, descending; click a column header to re-sort, "
        "select a row to open its card). Artifacts: at least "
        f"{queries.ARTIFACT_SHARE:.0%} of the top examples fire on the first token after BOS, or on one token "
        f"while the feature fires on ≥ {queries.ARTIFACT_MIN_DENSITY:.0%} of all tokens. Dead: never fired on "
        "the held-out tokens."
    )
    if rows.height == 0:
        st.info("No feature matches these filters.")
        st.stop()
    columns = [
        "layer",
        "feature",
        "status",
        "label",
        "n_contexts",
        "n_active",
        "density",
        "mean_act",
        "max_act",
    ]
    if token.strip():
        columns.insert(4, "token_act")
    event = st.dataframe(
        rows.select(*columns, "transcoder_id"),
        key="features_table",
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        width="stretch",
        column_config={
            "density": st.column_config.NumberColumn(format="%.5f"),
            "status": st.column_config.TextColumn(
                "status", help="'dead', or an artifact flag: first token after BOS / one frequent token"
            ),
            "n_contexts": st.column_config.NumberColumn("contexts", help="Held-out contexts it fires in"),
            "n_active": st.column_config.NumberColumn("active tokens", help="Held-out tokens it fires on"),
        },
    )
    if event.selection.rows:  # a selected row opens its card
        picked = rows.row(event.selection.rows[0], named=True)
        st.switch_page(
            "pages/2_Feature_card.py",
            query_params={"transcoder": picked["transcoder_id"], "feature": str(picked["feature"])},
        )


components.run_page(main)
