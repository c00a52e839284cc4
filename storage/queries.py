"""The read API of the Streamlit app: every query a page runs lives here (the SQL console: storage.sql_console).

Each function opens one short read-only connection to the published snapshot (storage.db.readers, never waiting
for a writer), runs its queries and returns plain Python or polars frames, so pages never hold a connection while
rendering and keep serving while Dagster materializes into the same file. Token strings come back raw: the app
escapes them when it renders (app/components.py).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import polars as pl

from interp.faithfulness import SETTINGS
from storage import features
from storage import transcoders as tc_store
from storage.db import readers

# Sort keys of the feature browser; the default, n_contexts, ranks features by how many held-out contexts they
# fire in, so the best-supported features come first (max_act puts BOS/first-token artifacts on top).
FEATURE_SORTS = ("n_contexts", "density", "max_act", "mean_act", "feature", "token_act")
FEATURE_SHOW = ("live", "all", "artifacts", "dead")  # browser filter: live = neither dead nor an artifact

# Artifact flags, computed at query time from the top examples (feature_examples, kind 'top'):
ARTIFACT_SHARE = 0.9  # share of top examples that must sit at the first token / after BOS, or on one token
ARTIFACT_MIN_EXAMPLES = 3  # fewer top examples than this: too few to call the feature anything
ARTIFACT_MIN_DENSITY = 0.05  # "one token everywhere": one token, and firing on >= 5% of all held-out tokens
ARTIFACT_FIRST = "artifact: BOS / first token"
ARTIFACT_TOKEN = "artifact: one frequent token"
DEAD = "dead"


def table_counts() -> dict[str, int]:
    """Rows per public table (the overview's 'what is built' line)."""
    from storage.schema import TABLES

    sql = " UNION ALL ".join(f"SELECT '{t.name}' AS name, count(*) AS n FROM {t.name}" for t in TABLES)
    return dict(readers.query(sql).iter_rows())


# ---- overview ------------------------------------------------------------------------------------------


def transcoders() -> pl.DataFrame:
    """The transcoder each layer serves (storage.transcoders: current versions) with its held-out metrics (NULL
    metrics until evaluated; NULL interval for an evaluation from before intervals), by model and layer."""
    return readers.query(
        f"""
        SELECT t.transcoder_id, t.model, t.layer, t.architecture, t.d_in, t.d_sae, t.train_tokens,
               m.n_eval_tokens, m.l0, m.fvu, m.fvu_typical, m.ce_clean, m.ce_spliced, m.ce_ablated,
               m.ce_recovered, m.ce_recovered_lo, m.ce_recovered_hi, m.n_eval_contexts, m.kl, m.dead_frac,
               m.dense_frac, m.gate_passed, m.goal_misses, t.created_at
        FROM transcoders t LEFT JOIN transcoder_metrics m USING (transcoder_id)
        WHERE t.transcoder_id IN ({tc_store.CURRENT_IDS_SQL})
        ORDER BY t.model, t.layer, t.transcoder_id
        """
    )


def lineage() -> list[dict[str, Any]]:
    """What produced each served transcoder: model, layer, weights path and its full training config/provenance."""
    rows = readers.query(
        "SELECT transcoder_id, model, layer, weights_path, config FROM transcoders "
        f"WHERE transcoder_id IN ({tc_store.CURRENT_IDS_SQL}) ORDER BY model, layer"
    )
    out = []
    for r in rows.iter_rows(named=True):
        r["config"] = json.loads(r["config"]) if r["config"] else {}
        out.append(r)
    return out


def corpus_summary() -> pl.DataFrame:
    """Documents, contexts and tokens per split (what text the atlas was built from)."""
    return readers.query(
        "SELECT split, count(DISTINCT source) AS documents, count(*) AS contexts, "
        "sum(len(tokens))::BIGINT AS tokens FROM contexts GROUP BY split ORDER BY split"
    )


def activation_summary() -> pl.DataFrame:
    """Harvested activation shards per model, layer and split (hooks, tokens, storage dtype)."""
    return readers.query(
        "SELECT model, layer, split, hook_in, hook_out, count(*) AS shards, sum(n_tokens)::BIGINT AS tokens, "
        "any_value(dtype) AS dtype, max(created_at) AS created_at "
        "FROM activation_shards GROUP BY model, layer, split, hook_in, hook_out ORDER BY model, layer, split"
    )


def training_curves() -> pl.DataFrame:
    return readers.query(
        "SELECT transcoder_id, step, tokens, loss, mse, sparsity_loss, l0, fvu, dead_frac, lr "
        "FROM training_curves ORDER BY transcoder_id, step"
    )


def splice_metrics() -> pl.DataFrame:
    return readers.query(
        "SELECT model, layers, n_eval_tokens, ce_clean, ce_spliced, ce_ablated, ce_recovered, kl "
        "FROM splice_metrics ORDER BY model, layers"
    )


# ---- feature browser -----------------------------------------------------------------------------------


def _flags_sql(where: str) -> str:
    """Per feature of the top examples matching `where` (on feature_examples e): n_top, bos_share (share at
    position <= 1 or right after a BOS token, the context's first token) and token_share (share on the most
    common token)."""
    return f"""
        WITH top AS (
          SELECT e.transcoder_id, e.feature, e.token_id,
                 (e.position <= 1 OR c.tokens[e.position] = c.tokens[1]) AS after_bos
          FROM feature_examples e JOIN contexts c USING (context_id)
          WHERE e.kind = 'top' AND {where}),
        per_token AS (SELECT transcoder_id, feature, count(*) AS n FROM top WHERE token_id IS NOT NULL
                      GROUP BY transcoder_id, feature, token_id)
        SELECT a.transcoder_id, a.feature, a.n_top, a.bos_share, coalesce(m.n_modal, 0) / a.n_top AS token_share
        FROM (SELECT transcoder_id, feature, count(*) AS n_top, avg(after_bos::INTEGER) AS bos_share
              FROM top GROUP BY ALL) a
        LEFT JOIN (SELECT transcoder_id, feature, max(n) AS n_modal FROM per_token GROUP BY ALL) m
          USING (transcoder_id, feature)"""


_STATUS_SQL = f"""
    CASE WHEN coalesce(f.n_active, 0) = 0 THEN '{DEAD}'
         WHEN fl.n_top >= {ARTIFACT_MIN_EXAMPLES} AND fl.bos_share >= {ARTIFACT_SHARE} THEN '{ARTIFACT_FIRST}'
         WHEN fl.n_top >= {ARTIFACT_MIN_EXAMPLES} AND fl.token_share >= {ARTIFACT_SHARE}
              AND f.density >= {ARTIFACT_MIN_DENSITY} THEN '{ARTIFACT_TOKEN}'
         ELSE '' END"""


def search_features(
    layers: list[int] | None = None,
    density: tuple[float, float] = (0.0, 1.0),
    label: str = "",
    token: str = "",
    order_by: str = "n_contexts",
    limit: int = 500,
    show: str = "live",
) -> pl.DataFrame:
    """Features filtered by layer, density range, label substring, "fires on token" (token_features index) and
    status, with each feature's `status`: '' (live), 'dead' (never fired on the held-out tokens) or an artifact
    flag (ARTIFACT_FIRST, ARTIFACT_TOKEN) and the shares behind it (bos_share, token_share of n_top examples).

    `token` matches a vocab string ignoring case and surrounding whitespace; the result then has `token_act`, the
    feature's mean activation on that token. `show` (FEATURE_SHOW) keeps live features, all, only artifacts or only
    dead ones. Sorted descending by `order_by` (one of FEATURE_SORTS).
    """
    if order_by not in FEATURE_SORTS:
        raise ValueError(f"order_by must be one of {FEATURE_SORTS}, got {order_by!r}")
    if show not in FEATURE_SHOW:
        raise ValueError(f"show must be one of {FEATURE_SHOW}, got {show!r}")
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
    status_filter = {
        "live": "status = ''",
        "all": "true",
        "artifacts": "status LIKE 'artifact%'",
        "dead": f"status = '{DEAD}'",
    }[show]
    sql = f"""
        WITH flags AS ({_flags_sql("true")}),
        rows AS (
          SELECT f.transcoder_id, t.layer, f.feature, {_STATUS_SQL} AS status, f.label, f.density, f.n_active,
                 f.n_contexts, f.mean_act, f.max_act, {token_col}, fl.n_top, fl.bos_share, fl.token_share
          FROM features f JOIN transcoders t USING (transcoder_id) {token_join}
          LEFT JOIN flags fl USING (transcoder_id, feature)
          WHERE {" AND ".join(where)})
        SELECT * FROM rows WHERE {status_filter}
        ORDER BY {order_by} DESC NULLS LAST, {"n_active DESC NULLS LAST," if order_by == "n_contexts" else ""}
                 layer, feature
        LIMIT ?"""
    return readers.query(sql, [*params, int(limit)])


def layers() -> list[int]:
    return readers.query("SELECT DISTINCT layer FROM transcoders ORDER BY layer")["layer"].to_list()


# ---- feature card --------------------------------------------------------------------------------------


def _linked_features(con, side: str, tid: str, feature: int, limit: int) -> list[dict[str, Any]]:
    """Upstream (side='src') or downstream (side='dst') features joined to their layer and label."""
    other = "src" if side == "src" else "dst"
    this = "dst" if side == "src" else "src"
    return readers.frame(
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


def _card_flags(con, tid: str, feature: int) -> dict[str, Any]:
    """The feature's status (as in search_features) with n_top, bos_share and token_share."""
    rows = readers.frame(
        con,
        f"""WITH fl AS ({_flags_sql("e.transcoder_id = $tid AND e.feature = $feature")})
            SELECT {_STATUS_SQL} AS status, fl.n_top, fl.bos_share, fl.token_share
            FROM features f LEFT JOIN fl USING (transcoder_id, feature)
            WHERE f.transcoder_id = $tid AND f.feature = $feature""",
        {"tid": tid, "feature": feature},
    )
    return rows.row(0, named=True) if rows.height else {"status": "", "n_top": 0}


def feature_card(transcoder_id: str, feature: int, n_links: int = 12) -> dict[str, Any] | None:
    """storage.features.feature_card (stats, examples, token effects, neighbours) plus the feature's connected
    features from `feature_edges`, all on one read-only connection; None if the feature is unknown.

    Added keys: flags (status '' / 'dead' / an artifact flag, with n_top, bos_share, token_share), upstream
    (features writing into this one) and downstream (features that have this one among their
    top upstream features), each a list of {transcoder_id, feature, layer, via, weight, label}, strongest first.
    """
    with (
        readers.reader() as con,
        contextlib.closing(con.cursor()) as cur,
    ):  # its own cursor: it leaves a result open
        card = features.feature_card(transcoder_id, int(feature), cur)
        if card is not None:
            card["flags"] = _card_flags(con, transcoder_id, int(feature))
            card["upstream"] = _linked_features(con, "src", transcoder_id, int(feature), n_links)
            card["downstream"] = _linked_features(con, "dst", transcoder_id, int(feature), n_links)
    return card


def feature_labels(keys: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """Labels of (transcoder_id, feature) pairs (features without a row are left out)."""
    if not keys:
        return {}
    rows = readers.query(
        "SELECT f.transcoder_id, f.feature, f.label FROM features f "
        "JOIN (SELECT unnest(?::VARCHAR[]) AS transcoder_id, unnest(?::INTEGER[]) AS feature) k "
        "USING (transcoder_id, feature)",
        [[k[0] for k in keys], [int(k[1]) for k in keys]],
    )
    return {(r[0], r[1]): r[2] or "" for r in rows.iter_rows()}


# ---- circuits ------------------------------------------------------------------------------------------


def graphs() -> pl.DataFrame:
    return readers.query(
        "SELECT graph_id, model, prompt, target, target_value, target_prob, method, replacement_score, "
        "completeness_score, error_share, n_nodes, n_edges, created_at FROM graphs ORDER BY created_at"
    )


def _in_ladder_order(column: str) -> str:
    """ORDER BY terms that list faithfulness settings as interp.faithfulness.SETTINGS does (unknown ones last, by
    name); binds one parameter: list(SETTINGS)."""
    return f"list_position(?::VARCHAR[], {column}), {column}"


def faithfulness() -> pl.DataFrame:
    """Every stored graph's faithfulness per setting, by target and then in ladder order."""
    return readers.query(
        "SELECT g.target, f.setting, f.n_nodes, f.pearson, f.spearman, f.sign_agreement "
        f"FROM graph_faithfulness f JOIN graphs g USING (graph_id) ORDER BY g.target, {_in_ladder_order('f.setting')}",
        [list(SETTINGS)],
    )


def graph(graph_id: str) -> dict[str, Any] | None:
    """One attribution graph: its row, nodes (with token strings of embed nodes and the `features` label of
    feature nodes), edges, the prompt's token strings by position, and its real-model faithfulness (summary per
    setting, and each intervened node's predicted and actual change); None if unknown."""
    with readers.reader() as con:
        head = readers.frame(con, "SELECT * FROM graphs WHERE graph_id = ?", [graph_id])
        if head.height == 0:
            return None
        row = head.row(0, named=True)
        nodes = readers.frame(
            con,
            """
            SELECT n.node_id, n.kind, n.layer, n.position, n.feature, n.transcoder_id, n.activation, n.influence,
                   n.label, n.cumulative_influence, n.feeds, v.token_str, f.label AS feature_label
            FROM graph_nodes n LEFT JOIN vocab v ON n.kind = 'embed' AND v.model = ? AND v.token_id = n.feature
            LEFT JOIN features f ON n.kind IN ('feature', 'target') AND f.transcoder_id = n.transcoder_id
                 AND f.feature = n.feature
            WHERE n.graph_id = ? ORDER BY n.layer NULLS FIRST, n.position, n.node_id""",
            [row["model"], graph_id],
        )
        edges = readers.frame(
            con,
            "SELECT src_node, dst_node, weight FROM graph_edges WHERE graph_id = ? ORDER BY abs(weight) DESC",
            [graph_id],
        )
        tokens = row.get("tokens") or []
        vocab = dict(
            readers.frame(
                con,
                "SELECT token_id, token_str FROM vocab WHERE model = ? AND token_id IN (SELECT unnest(?::INTEGER[]))",
                [row["model"], tokens],
            ).iter_rows()
        )
        faithfulness = readers.frame(
            con,
            "SELECT setting, n_nodes, pearson, spearman, sign_agreement FROM graph_faithfulness "
            f"WHERE graph_id = ? ORDER BY {_in_ladder_order('setting')}",
            [graph_id, list(SETTINGS)],
        )
        interventions = readers.frame(
            con,
            f"""
            SELECT i.node_id, n.label, i.setting, i.predicted, i.actual
            FROM graph_interventions i LEFT JOIN graph_nodes n ON n.graph_id = i.graph_id AND n.node_id = i.node_id
            WHERE i.graph_id = ? ORDER BY {_in_ladder_order("i.setting")}, abs(i.predicted) DESC""",
            [graph_id, list(SETTINGS)],
        )
    return {
        "graph": row,
        "nodes": nodes,
        "edges": edges,
        "token_strs": [vocab.get(t, str(t)) for t in tokens],
        "faithfulness": faithfulness,
        "interventions": interventions,
    }
