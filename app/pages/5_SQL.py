"""SQL: a read-only console over the atlas database (no writes, no files, no network; results row-limited)."""

import streamlit as st

from app import components
from storage import example_queries, queries

st.set_page_config(page_title="SQL · Transcoder Atlas", layout="wide")
st.title("SQL console")
components.transcoders_or_stop()
st.caption(
    f"Read-only DuckDB over the atlas (tables: `python -m storage.schema`). One SELECT/WITH/SHOW/DESCRIBE/"
    f"EXPLAIN statement at a time; at most {queries.MAX_SQL_ROWS:,} rows come back; files and network are off."
)

examples = example_queries.BY_NAME
name = st.selectbox("Example", list(examples), key="sql_example", format_func=lambda n: n.replace("_", " "))
example = examples[name]
st.caption(example.question)
if st.session_state.get("_sql_example") != name:  # picking an example replaces the editor's text
    st.session_state["_sql_example"] = name
    st.session_state["sql"] = example.sql.strip("\n")
sql = st.text_area("Query", key="sql", height=220)

params = {}
if example.params:
    cols = st.columns(len(example.params))
    for col, (param, default) in zip(cols, example.params.items()):
        raw = col.text_input(f"${param}", str(default), key=f"sql_param_{name}_{param}")
        try:
            params[param] = type(default)(raw)
        except ValueError:
            st.error(f"${param} must be a {type(default).__name__}, got {raw!r}.")
            st.stop()

if sql.strip():
    try:
        rows, cut = queries.run_console(sql, params)
    except queries.SqlError as e:
        st.error(str(e))
        st.stop()
    st.caption(f"{rows.height} rows" + (f" (cut at {queries.MAX_SQL_ROWS:,})" if cut else ""))
    st.dataframe(rows, key="sql_result", hide_index=True)
