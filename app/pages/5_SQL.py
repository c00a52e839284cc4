"""SQL: a read-only console over the atlas database (no writes, no files, no network; memory, temp space and rows
limited). Examples open with parameters drawn from the atlas, so each returns rows."""

import streamlit as st

from app import components
from app.components import esc
from storage import example_queries, layout, sql_console

st.set_page_config(page_title="SQL · Transcoder Atlas", layout="wide")
st.title("SQL console")


@st.cache_data(ttl=60, show_spinner=False)
def example_defaults(name: str, path: str, version: tuple[float, ...]) -> dict:
    return example_queries.defaults(name, path)


def main() -> None:
    components.transcoders_or_stop()
    st.caption(
        "Read-only DuckDB over the atlas (tables: `python -m storage.schema`). One SELECT / WITH / FROM / SHOW / "
        f"DESCRIBE / SUMMARIZE statement, or EXPLAIN [ANALYZE] of one, at a time; at most {sql_console.MAX_SQL_ROWS:,} "
        f"rows come back; {sql_console.CONSOLE_LIMITS['memory_limit']} of memory; files and network are off."
    )
    examples = example_queries.BY_NAME
    name = st.selectbox(
        "Example", list(examples), key="sql_example", format_func=lambda n: n.replace("_", " ")
    )
    example = examples[name]
    st.caption(esc(example.question))
    if st.session_state.get("_sql_example") != name:  # picking an example replaces the editor's text
        st.session_state["_sql_example"] = name
        st.session_state["sql"] = example.sql.strip("\n")
    sql = st.text_area("Query", key="sql", height=220)

    params = {}
    if example.params:
        path = layout.db_path()
        defaults = example_defaults(name, path, components.db_version(path))
        cols = st.columns(len(example.params))
        for col, (param, fallback) in zip(cols, example.params.items()):
            raw = col.text_input(f"${param}", str(defaults[param]), key=f"sql_param_{name}_{param}")
            try:
                params[param] = type(fallback)(raw)
            except ValueError:
                st.error(f"${param} must be a {type(fallback).__name__}, got {esc(repr(raw))}.")
                st.stop()

    if sql.strip():
        try:
            rows, cut = sql_console.run_console(sql, params)
        except sql_console.SqlError as e:
            st.error(esc(str(e)))
            st.stop()
        st.caption(f"{rows.height} rows" + (f" (cut at {sql_console.MAX_SQL_ROWS:,})" if cut else ""))
        st.dataframe(rows, key="sql_result", hide_index=True, width="stretch")


components.run_page(main)
