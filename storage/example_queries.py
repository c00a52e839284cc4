"""Example SQL over the feature database: questions a researcher asks, answered by one query each.

Every query is plain DuckDB SQL with named parameters ($layer, $token, ...) and runs unchanged in the app's SQL
page, the `duckdb` CLI (`duckdb data/atlas.duckdb`, then replace the $parameters), or `run(name, **params)`.
`python -m storage.example_queries` prints them as markdown. Tables and columns: storage/schema.py.

Default parameters come from the atlas itself (`defaults(name)`): each query's `defaults_sql` picks a layer,
token or feature that exists, so every example returns rows on whatever atlas was built; `params` are the
fallbacks (and fix each parameter's type) when the atlas has nothing to offer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import duckdb
import polars as pl

from storage.db import readers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExampleQuery:
    name: str
    question: str
    sql: str
    params: dict[str, Any] = field(default_factory=dict)  # fallback defaults for the $parameters (and types)
    defaults_sql: str = ""  # one row: a value per parameter drawn from the atlas (NULL keeps the fallback)


# Prefer word tokens (' America', 'ing' is a sub-word) when a default token is drawn from the atlas.
_WORDLIKE = "regexp_matches(v.token_str, '^ ?[A-Za-z]{3,}$')"


QUERIES: tuple[ExampleQuery, ...] = (
    ExampleQuery(
        "features_by_density_and_token",
        "Features of layer $layer with density between $min_density and $max_density whose top examples "
        "contain the token $token (anywhere in the example window).",
        """
        SELECT f.transcoder_id, f.feature, f.density, f.label, count(*) AS n_examples
        FROM features f
        JOIN transcoders t USING (transcoder_id)
        JOIN feature_examples e USING (transcoder_id, feature)
        JOIN contexts c USING (context_id)
        JOIN vocab v ON v.model = t.model AND v.token_str = $token
        WHERE t.layer = $layer AND e.kind = 'top'
          AND f.density BETWEEN $min_density AND $max_density
          AND list_contains(c.tokens[e.window_start + 1 : e.window_start + len(e.token_acts)], v.token_id)
        GROUP BY ALL
        ORDER BY n_examples DESC, f.feature""",
        {"layer": 5, "min_density": 1e-4, "max_density": 1e-2, "token": " America"},
        f"""
        WITH band AS (
          SELECT CASE WHEN count(*) FILTER (WHERE density BETWEEN 1e-4 AND 1e-2 AND n_active > 0) > 0
                      THEN 1e-4 ELSE 0.0 END AS min_density,
                 CASE WHEN count(*) FILTER (WHERE density BETWEEN 1e-4 AND 1e-2 AND n_active > 0) > 0
                      THEN 1e-2 ELSE 1.0 END AS max_density
          FROM features)
        SELECT t.layer, any_value(band.min_density) AS min_density, any_value(band.max_density) AS max_density,
               v.token_str AS token
        FROM band, feature_examples e
        JOIN features f USING (transcoder_id, feature)
        JOIN transcoders t USING (transcoder_id)
        JOIN vocab v ON v.model = t.model AND v.token_id = e.token_id
        WHERE e.kind = 'top' AND e.position > 1 AND f.density BETWEEN band.min_density AND band.max_density
        GROUP BY t.layer, v.token_str
        ORDER BY (v.token_str = ' America') DESC, {_WORDLIKE} DESC, count(*) DESC, t.layer, v.token_str
        LIMIT 1""",
    ),
    ExampleQuery(
        "features_firing_on_token",
        "Which features fire most on the token $token (mean activation over all its held-out occurrences)?",
        """
        SELECT t.layer, tf.transcoder_id, tf.feature, tf.mean_act, tf.count, f.label
        FROM token_features tf
        JOIN transcoders t USING (transcoder_id)
        JOIN vocab v ON v.model = t.model AND v.token_id = tf.token_id
        LEFT JOIN features f USING (transcoder_id, feature)
        WHERE v.token_str = $token
        ORDER BY tf.mean_act DESC
        LIMIT $limit""",
        {"token": " America", "limit": 20},
        f"""
        SELECT v.token_str AS token
        FROM token_features tf
        JOIN transcoders t USING (transcoder_id)
        JOIN vocab v ON v.model = t.model AND v.token_id = tf.token_id
        GROUP BY v.token_str
        ORDER BY (v.token_str = ' America') DESC, {_WORDLIKE} DESC, count(*) DESC, v.token_str
        LIMIT 1""",
    ),
    ExampleQuery(
        "features_promoting_token",
        "Which features' decoder directions raise the logit of $token most (weight-based, f_dec . W_U)?",
        """
        SELECT t.layer, ft.transcoder_id, ft.feature, ft.value, ft.rank, f.label
        FROM feature_tokens ft
        JOIN transcoders t USING (transcoder_id)
        JOIN vocab v ON v.model = t.model AND v.token_id = ft.token_id
        LEFT JOIN features f USING (transcoder_id, feature)
        WHERE ft.kind = 'logit_top' AND v.token_str = $token
        ORDER BY ft.value DESC
        LIMIT $limit""",
        {"token": " America", "limit": 20},
        f"""
        SELECT v.token_str AS token
        FROM feature_tokens ft
        JOIN transcoders t USING (transcoder_id)
        JOIN vocab v ON v.model = t.model AND v.token_id = ft.token_id
        WHERE ft.kind = 'logit_top' AND ft.value > 0
        GROUP BY v.token_str
        ORDER BY (v.token_str = ' America') DESC, {_WORDLIKE} DESC, count(*) DESC, v.token_str
        LIMIT 1""",
    ),
    ExampleQuery(
        "feature_health_by_layer",
        "Per layer: features, dead (never fired), dense (density > $dense), median density, and live features "
        "whose label is empty.",
        """
        SELECT t.layer, f.transcoder_id, count(*) AS n_features,
               count(*) FILTER (WHERE f.n_active = 0) AS dead,
               count(*) FILTER (WHERE f.density > $dense) AS dense,
               median(f.density) AS median_density,
               count(*) FILTER (WHERE f.n_active > 0 AND coalesce(f.label, '') = '') AS unlabeled
        FROM features f JOIN transcoders t USING (transcoder_id)
        GROUP BY ALL
        ORDER BY t.layer""",
        {"dense": 0.1},
    ),
    ExampleQuery(
        "cross_layer_twins",
        "Pairs of features in different layers whose decoder directions have cosine above $min_cosine.",
        """
        SELECT ta.layer AS layer, n.feature, tb.layer AS nb_layer, n.nb_feature, n.cosine
        FROM feature_neighbors n
        JOIN transcoders ta ON ta.transcoder_id = n.transcoder_id
        JOIN transcoders tb ON tb.transcoder_id = n.nb_transcoder_id
        WHERE ta.layer <> tb.layer AND n.cosine > $min_cosine
        ORDER BY n.cosine DESC
        LIMIT $limit""",
        {"min_cosine": 0.8, "limit": 50},
        """
        SELECT CASE WHEN count(*) FILTER (WHERE n.cosine > 0.8) > 0 THEN 0.8
                    ELSE floor(quantile_disc(n.cosine, 0.9) * 100) / 100 - 0.01 END AS min_cosine
        FROM feature_neighbors n
        JOIN transcoders ta ON ta.transcoder_id = n.transcoder_id
        JOIN transcoders tb ON tb.transcoder_id = n.nb_transcoder_id
        WHERE ta.layer <> tb.layer""",
    ),
    ExampleQuery(
        "strongest_examples_of_feature",
        "The top examples of feature $feature in layer $layer as text, with the token it fires on.",
        """
        WITH ex AS (
          SELECT e.rank, e.activation, e.token_id, t.model,
                 c.tokens[e.window_start + 1 : e.window_start + len(e.token_acts)] AS win
          FROM feature_examples e JOIN transcoders t USING (transcoder_id) JOIN contexts c USING (context_id)
          WHERE t.layer = $layer AND e.feature = $feature AND e.kind = 'top'),
        tok AS (SELECT rank, model, unnest(win) AS token_id, unnest(range(len(win))) AS i FROM ex)
        SELECT ex.rank, ex.activation, vt.token_str AS fires_on, string_agg(v.token_str, '' ORDER BY tok.i) AS text
        FROM ex
        JOIN tok USING (rank)
        JOIN vocab v ON v.model = tok.model AND v.token_id = tok.token_id
        JOIN vocab vt ON vt.model = ex.model AND vt.token_id = ex.token_id
        GROUP BY ex.rank, ex.activation, vt.token_str
        ORDER BY ex.rank""",
        {"layer": 5, "feature": 0},
        """
        SELECT t.layer, f.feature
        FROM features f JOIN transcoders t USING (transcoder_id)
        WHERE f.n_active > 0 AND EXISTS (
          SELECT 1 FROM feature_examples e
          WHERE e.transcoder_id = f.transcoder_id AND e.feature = f.feature AND e.kind = 'top' AND e.position > 1)
        ORDER BY f.n_contexts DESC NULLS LAST, f.n_active DESC, t.layer, f.feature
        LIMIT 1""",
    ),
)

BY_NAME = {q.name: q for q in QUERIES}


def defaults(name: str, path: str | None = None) -> dict[str, Any]:
    """Parameters of example `name` drawn from the atlas (its `defaults_sql`), each cast to its fallback's type;
    the fallback where the atlas gives nothing (no row, NULL, or a table not built yet)."""
    q = BY_NAME[name]
    out = dict(q.params)
    if not q.defaults_sql:
        return out
    try:
        found = readers.query(q.defaults_sql, path=path)
    except (duckdb.CatalogException, duckdb.BinderException) as e:  # a table not materialized yet
        log.info("example %s keeps its fallback parameters: %s", name, e)
        return out
    if found.height:
        for key, value in found.row(0, named=True).items():
            if key in out and value is not None:
                out[key] = type(q.params[key])(value)
    return out


def run(name: str, path: str | None = None, **params: Any) -> pl.DataFrame:
    """Run example query `name` with its defaults (drawn from the atlas) overridden by `params`."""
    q = BY_NAME[name]
    unknown = set(params) - set(q.params)
    if unknown:
        raise ValueError(f"Query {name!r} has parameters {sorted(q.params)}, not {sorted(unknown)}.")
    return readers.query(q.sql, {**defaults(name, path), **params}, path=path)


def markdown() -> str:
    out = ["# Example queries", ""]
    for q in QUERIES:
        out += [
            f"## {q.name}",
            "",
            q.question,
            "",
            "```sql",
            q.sql.strip("\n"),
            "```",
            f"Fallback defaults (the app draws them from the atlas): {q.params}",
            "",
        ]
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
