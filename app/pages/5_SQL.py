"""SQL: a read-only console over the atlas database (no writes, no files, no network; results row-limited)."""

import streamlit as st

from app import components
from storage import queries

st.set_page_config(page_title="SQL · Transcoder Atlas", layout="wide")
st.title("SQL console")
components.transcoders_or_stop()
st.caption(
    f"Read-only DuckDB over the atlas (tables documented in `docs/schema.md`). One SELECT/WITH/SHOW/DESCRIBE/"
    f"EXPLAIN statement at a time; at most {queries.MAX_SQL_ROWS:,} rows come back; files and network are off."
)

examples = queries.CONSOLE_EXAMPLES
example = st.selectbox("Example", list(examples), key="sql_example")
if st.session_state.get("_sql_example") != example:  # picking an example replaces the editor's text
    st.session_state["_sql_example"] = example
    st.session_state["sql"] = examples[example]
sql = st.text_area("Query", key="sql", height=160)

if sql.strip():
    try:
        rows, cut = queries.run_console(sql)
    except queries.SqlError as e:
        st.error(str(e))
        st.stop()
    st.caption(f"{rows.height} rows" + (f" (cut at {queries.MAX_SQL_ROWS:,})" if cut else ""))
    st.dataframe(rows, key="sql_result", hide_index=True)
