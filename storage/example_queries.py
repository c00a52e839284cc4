"""Example SQL over the feature database: questions a researcher asks, answered by one query each.

Every query is plain DuckDB SQL with named parameters ($layer, $token, ...) and runs unchanged in the app's SQL
page, the `duckdb` CLI (`duckdb data/atlas.duckdb`, then replace the $parameters), or `run(name, **params)`.
`python -m storage.example_queries` prints them as markdown. Tables and columns: storage/schema.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from storage import db


@dataclass(frozen=True)
class ExampleQuery:
    name: str
    question: str
    sql: str
    params: dict[str, Any] = field(default_factory=dict)  # defaults for the $parameters


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
    ),
)

BY_NAME = {q.name: q for q in QUERIES}


def run(name: str, **params: Any) -> pl.DataFrame:
    """Run example query `name` with its default parameters overridden by `params`."""
    q = BY_NAME[name]
    unknown = set(params) - set(q.params)
    if unknown:
        raise ValueError(f"Query {name!r} has parameters {sorted(q.params)}, not {sorted(unknown)}.")
    return db.query(q.sql, {**q.params, **params})


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
            f"Defaults: {q.params}",
            "",
        ]
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
