"""The read API of the Streamlit app: every query a page runs lives here, plus the sandboxed SQL console.

Each function opens one short read-only connection (storage.db.reader, retried while a writer holds the file),
runs its queries and returns plain Python or polars frames, so pages never hold a connection while rendering
and keep serving while Dagster materializes into the same file. Token strings come back raw: the app escapes
them when it renders (app/components.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from storage import db, features

MAX_SQL_ROWS = 1000  # rows the SQL console returns at most
SQL_TIMEOUT_S = 20.0  # the console interrupts longer queries

FEATURE_SORTS = ("density", "max_act", "mean_act", "feature", "token_act")


def table_counts() -> dict[str, int]:
    """Rows per public table (the overview's 'what is built' line)."""
    from storage.schema import TABLES

    sql = " UNION ALL ".join(f"SELECT '{t.name}' AS name, count(*) AS n FROM {t.name}" for t in TABLES)
    return dict(db.query(sql).iter_rows())


# ---- overview ------------------------------------------------------------------------------------------


def transcoders() -> pl.DataFrame:
    """Every transcoder with its held-out metrics (NULL metrics until evaluated), by model and layer."""
    return db.query(
        """
        SELECT t.transcoder_id, t.model, t.layer, t.architecture, t.d_in, t.d_sae, t.train_tokens,
               m.n_eval_tokens, m.l0, m.fvu, m.ce_clean, m.ce_spliced, m.ce_ablated, m.ce_recovered, m.kl,
               m.dead_frac, m.dense_frac, m.gate_passed, t.created_at
        FROM transcoders t LEFT JOIN transcoder_metrics m USING (transcoder_id)
        ORDER BY t.model, t.layer, t.transcoder_id
        """
    )


def lineage() -> list[dict[str, Any]]:
    """What produced each transcoder: model, layer, weights path and its full training config/provenance."""
    rows = db.query(
        "SELECT transcoder_id, model, layer, weights_path, config FROM transcoders ORDER BY model, layer"
    )
    out = []
    for r in rows.iter_rows(named=True):
        r["config"] = json.loads(r["config"]) if r["config"] else {}
        out.append(r)
    return out


def corpus_summary() -> pl.DataFrame:
    """Documents, contexts and tokens per split (what text the atlas was built from)."""
    return db.query(
        "SELECT split, count(DISTINCT source) AS documents, count(*) AS contexts, "
        "sum(len(tokens))::BIGINT AS tokens FROM contexts GROUP BY split ORDER BY split"
    )


def activation_summary() -> pl.DataFrame:
    """Harvested activation shards per model, layer and split (hooks, tokens, storage dtype)."""
    return db.query(
        "SELECT model, layer, split, hook_in, hook_out, count(*) AS shards, sum(n_tokens)::BIGINT AS tokens, "
        "any_value(dtype) AS dtype, max(created_at) AS created_at "
        "FROM activation_shards GROUP BY model, layer, split, hook_in, hook_out ORDER BY model, layer, split"
    )


def training_curves() -> pl.DataFrame:
    return db.query(
        "SELECT transcoder_id, step, tokens, loss, mse, sparsity_loss, l0, fvu, dead_frac, lr "
        "FROM training_curves ORDER BY transcoder_id, step"
    )


def splice_metrics() -> pl.DataFrame:
    return db.query(
        "SELECT model, layers, n_eval_tokens, ce_clean, ce_spliced, ce_ablated, ce_recovered, kl "
        "FROM splice_metrics ORDER BY model, layers"
    )


# ---- feature browser -----------------------------------------------------------------------------------


def search_features(
    layers: list[int] | None = None,
    density: tuple[float, float] = (0.0, 1.0),
    label: str = "",
    token: str = "",
    order_by: str = "max_act",
    limit: int = 500,
) -> pl.DataFrame:
    """Features filtered by layer, density range, label substring and "fires on token" (token_features index).

    `token` matches a vocab string ignoring case and surrounding whitespace; the result then has `token_act`, the
    feature's mean activation on that token. Sorted descending by `order_by` (one of FEATURE_SORTS).
    """
    if order_by not in FEATURE_SORTS:
        raise ValueError(f"order_by must be one of {FEATURE_SORTS}, got {order_by!r}")
    where, params = ["f.density BETWEEN ? AND ?"], [float(density[0]), float(density[1])]
    if layers:
        where.append("t.layer IN (SELECT unnest(?::INTEGER[]))")
        params.append(list(layers))
    if label.strip():
        where.append("f.label ILIKE ?")
        params.append(f"%{label.strip()}%")
    token_join, token_col = "", "NULL::REAL AS token_act"
    if token.strip():
        token_join = """
        JOIN (SELECT tf.transcoder_id, tf.feature, max(tf.mean_act) AS token_act
              FROM token_features tf JOIN transcoders tt USING (transcoder_id)
              JOIN vocab v ON v.model = tt.model AND v.token_id = tf.token_id
              WHERE lower(trim(v.token_str)) = lower(trim(?))
              GROUP BY ALL) tok USING (transcoder_id, feature)"""
        token_col = "tok.token_act"
        params.insert(0, token)
    if order_by == "token_act" and not token.strip():
        order_by = "max_act"
    sql = f"""
        SELECT f.transcoder_id, t.layer, f.feature, f.label, f.density, f.mean_act, f.max_act, {token_col}
        FROM features f JOIN transcoders t USING (transcoder_id) {token_join}
        WHERE {" AND ".join(where)}
        ORDER BY {order_by} DESC NULLS LAST, t.layer, f.feature
        LIMIT ?"""
    return db.query(sql, [*params, int(limit)])


def layers() -> list[int]:
    return db.query("SELECT DISTINCT layer FROM transcoders ORDER BY layer")["layer"].to_list()


# ---- feature card --------------------------------------------------------------------------------------


def _linked_features(con, side: str, tid: str, feature: int, limit: int) -> list[dict[str, Any]]:
    """Upstream (side='src') or downstream (side='dst') features joined to their layer and label."""
    other = "src" if side == "src" else "dst"
    this = "dst" if side == "src" else "src"
    return db.frame(
        con,
        f"""
        SELECT e.{other}_transcoder_id AS transcoder_id, e.{other}_feature AS feature, t.layer, e.via, e.weight,
               f.label
        FROM feature_edges e
        LEFT JOIN transcoders t ON t.transcoder_id = e.{other}_transcoder_id
        LEFT JOIN features f ON f.transcoder_id = e.{other}_transcoder_id AND f.feature = e.{other}_feature
        WHERE e.{this}_transcoder_id = ? AND e.{this}_feature = ?
        ORDER BY abs(e.weight) DESC LIMIT ?""",
        [tid, feature, limit],
    ).to_dicts()


def feature_card(transcoder_id: str, feature: int, n_links: int = 12) -> dict[str, Any] | None:
    """storage.features.feature_card (stats, examples, token effects, neighbours) plus the feature's connected
    features from `feature_edges`, all on one read-only connection; None if the feature is unknown.

    Added keys: upstream (features writing into this one) and downstream (features that have this one among their
    top upstream features), each a list of {transcoder_id, feature, layer, via, weight, label}, strongest first.
    """
    with (
        db.reader() as con,
        contextlib.closing(con.cursor()) as cur,
    ):  # its own cursor: it leaves a result open
        card = features.feature_card(transcoder_id, int(feature), cur)
        if card is not None:
            card["upstream"] = _linked_features(con, "src", transcoder_id, int(feature), n_links)
            card["downstream"] = _linked_features(con, "dst", transcoder_id, int(feature), n_links)
    return card


def feature_labels(keys: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """Labels of (transcoder_id, feature) pairs (features without a row are left out)."""
    if not keys:
        return {}
    rows = db.query(
        "SELECT f.transcoder_id, f.feature, f.label FROM features f "
        "JOIN (SELECT unnest(?::VARCHAR[]) AS transcoder_id, unnest(?::INTEGER[]) AS feature) k "
        "USING (transcoder_id, feature)",
        [[k[0] for k in keys], [int(k[1]) for k in keys]],
    )
    return {(r[0], r[1]): r[2] or "" for r in rows.iter_rows()}


# ---- circuits ------------------------------------------------------------------------------------------


def graphs() -> pl.DataFrame:
    return db.query(
        "SELECT graph_id, model, prompt, target, target_value, created_at FROM graphs ORDER BY created_at"
    )


def graph(graph_id: str) -> dict[str, Any] | None:
    """One attribution graph: its row, nodes (with token strings of embed nodes and the `features` label of
    feature nodes), edges and the prompt's token strings by position; None if unknown."""
    with db.reader() as con:
        head = db.frame(con, "SELECT * FROM graphs WHERE graph_id = ?", [graph_id])
        if head.height == 0:
            return None
        row = head.row(0, named=True)
        nodes = db.frame(
            con,
            """
            SELECT n.node_id, n.kind, n.layer, n.position, n.feature, n.transcoder_id, n.activation, n.influence,
                   n.label, v.token_str, f.label AS feature_label
            FROM graph_nodes n LEFT JOIN vocab v ON n.kind = 'embed' AND v.model = ? AND v.token_id = n.feature
            LEFT JOIN features f ON n.kind IN ('feature', 'target') AND f.transcoder_id = n.transcoder_id
                 AND f.feature = n.feature
            WHERE n.graph_id = ? ORDER BY n.layer NULLS FIRST, n.position, n.node_id""",
            [row["model"], graph_id],
        )
        edges = db.frame(
            con,
            "SELECT src_node, dst_node, weight FROM graph_edges WHERE graph_id = ? ORDER BY abs(weight) DESC",
            [graph_id],
        )
        tokens = row.get("tokens") or []
        vocab = dict(
            db.frame(
                con,
                "SELECT token_id, token_str FROM vocab WHERE model = ? AND token_id IN (SELECT unnest(?::INTEGER[]))",
                [row["model"], tokens],
            ).iter_rows()
        )
    return {
        "graph": row,
        "nodes": nodes,
        "edges": edges,
        "token_strs": [vocab.get(t, str(t)) for t in tokens],
    }


# ---- SQL console ---------------------------------------------------------------------------------------


class SqlError(ValueError):
    """A console query that failed (DuckDB's message included)."""


class SqlRejected(SqlError):
    """A console statement that is not a single read-only query (or that tried to touch files)."""


_READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def check_console_sql(sql: str) -> str:
    """The one statement in `sql` if it is a read (SELECT/WITH/FROM/SHOW/DESCRIBE/SUMMARIZE/EXPLAIN)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise SqlRejected(f"Could not parse the query: {e}") from e
    if len(statements) != 1:
        raise SqlRejected(f"Run one statement at a time (got {len(statements)}).")
    kind = statements[0].type
    if kind not in _READ_ONLY:
        raise SqlRejected(
            f"The SQL console is read-only: {kind.name} statements are not allowed. "
            "Use SELECT / WITH / SHOW / DESCRIBE / EXPLAIN; write to the atlas through Dagster assets."
        )
    return statements[0].query


def run_console(
    sql: str,
    params: dict[str, Any] | None = None,
    max_rows: int = MAX_SQL_ROWS,
    timeout_s: float = SQL_TIMEOUT_S,
) -> tuple[pl.DataFrame, bool]:
    """Run one read-only query in the sandbox; returns (at most `max_rows` rows, whether rows were cut off).

    `params` binds DuckDB named parameters ($name); those the query does not mention are ignored.

    Defence in depth: the statement type is checked first, then the query runs on a connection that is
    read_only, has enable_external_access=false (no files, no network) and a locked configuration.
    """
    query = check_console_sql(sql)
    used = {k: v for k, v in (params or {}).items() if re.search(rf"\${re.escape(k)}\b", query)}
    with db.reader(sandboxed=True) as con:
        timer = threading.Timer(timeout_s, con.interrupt)
        timer.start()
        try:
            batches = con.sql(query, params=used or None).to_arrow_reader(max(1, min(max_rows + 1, 10_000)))
            rows, tables = 0, []
            for batch in batches:
                tables.append(batch)
                rows += batch.num_rows
                if rows > max_rows:
                    break
            table = pa.Table.from_batches(tables, schema=batches.schema)
        except duckdb.PermissionException as e:
            raise SqlRejected(
                f"The SQL console cannot read or write files or reach the network ({e})."
            ) from e
        except duckdb.InterruptException as e:
            raise SqlRejected(f"The query ran longer than {timeout_s:.0f} s and was stopped.") from e
        except duckdb.Error as e:
            raise SqlError(f"Query failed: {e}") from e
        finally:
            timer.cancel()
    return pl.from_arrow(table.slice(0, max_rows)), rows > max_rows
