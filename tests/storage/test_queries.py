"""storage/queries.py: the app's read API and the sandboxed SQL console, against the fixture atlas."""

from __future__ import annotations

import pytest

from storage import db, queries
from tests.app.fixture_db import HOSTILE_FEATURE, IMG, SCRIPT


@pytest.fixture
def atlas(atlas_home, tiny_model_dir):
    from tests.app import fixture_db

    return fixture_db.build(tiny_model_dir)


def test_reading_a_missing_atlas_says_how_to_build_it(atlas_home):
    with pytest.raises(FileNotFoundError, match="make atlas"):
        queries.transcoders()


def test_feature_card_examples_are_the_context_windows_with_their_activations(atlas):
    tid = atlas["transcoders"][0]
    card = queries.feature_card(tid, HOSTILE_FEATURE)
    top = card["examples"][0]
    assert (top["kind"], top["rank"], top["activation"]) == ("top", 0, 2.0)
    # independent: the window is contexts.tokens[1:9] decoded through vocab
    ctx = db.query("SELECT tokens FROM contexts WHERE context_id = 0")["tokens"][0].to_list()
    vocab = dict(
        db.query("SELECT token_id, token_str FROM vocab WHERE model = ?", [atlas["model"]]).iter_rows()
    )
    assert top["tokens"] == [vocab[i] for i in ctx[1:9]]
    assert top["tokens"][3:5] == [SCRIPT, IMG] and top["acts"][4] == 2.0 and top["highlight"] == 4
    assert [e["kind"] for e in card["examples"]] == ["top"] * 3 + ["q1"] * 2 + ["q0"] * 2
    assert card["token_effects"]["deembed"][0] == (SCRIPT, 1.0)
    assert [(u["feature"], u["layer"]) for u in card["downstream"]] == [(HOSTILE_FEATURE, 1)]
    assert queries.feature_card(tid, 999) is None


def test_search_features_by_token_label_layer_and_density(atlas):
    by_token = queries.search_features(token=" A ", order_by="token_act")
    assert list(by_token["feature"]) == [7, 7, 2, 2] and list(by_token["token_act"]) == [1.5, 1.5, 0.5, 0.5]
    by_script_token = queries.search_features(token=SCRIPT)
    assert set(by_script_token["feature"]) == {HOSTILE_FEATURE}
    assert queries.search_features(label="script", layers=[0])["layer"].to_list() == [0]
    dense = queries.search_features(density=(0.2, 1.0), order_by="density")
    assert dense["density"].min() >= 0.2 and dense["density"].is_sorted(descending=True)
    with pytest.raises(ValueError, match="order_by"):
        queries.search_features(order_by="density; DROP TABLE features")


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("CREATE TABLE x (a INTEGER)", "read-only: CREATE"),
        ("INSERT INTO vocab VALUES ('m', 1, 'x')", "read-only: INSERT"),
        ("COPY features TO 'out.csv'", "read-only: COPY"),
        ("ATTACH 'other.duckdb' AS o", "read-only: ATTACH"),
        ("INSTALL httpfs", "read-only: LOAD"),
        ("SET enable_external_access = true", "read-only: SET"),
        ("PRAGMA version", "read-only: PRAGMA"),
        ("SELECT 1; DROP TABLE features", "one statement"),
        ("SELECT * FROM read_csv('/etc/passwd')", "cannot read or write files"),
        ("SELECT * FROM read_parquet('/etc/hosts')", "cannot read or write files"),
        ("SELEC 1", "Could not parse"),
    ],
)
def test_console_rejects_anything_but_one_read(atlas, sql, message):
    with pytest.raises(queries.SqlRejected, match=message):
        queries.run_console(sql)
    assert db.query("SELECT count(*) AS n FROM features")["n"][0] == 32  # nothing changed


def test_console_reads_limits_rows_and_stops_long_queries(atlas):
    rows, cut = queries.run_console("WITH f AS (SELECT * FROM features) SELECT count(*) AS n FROM f")
    assert rows["n"][0] == 32 and not cut
    assert queries.run_console("DESCRIBE features")[0].height > 10
    assert queries.run_console("EXPLAIN SELECT * FROM features")[0].height >= 1
    rows, cut = queries.run_console("SELECT * FROM range(5000)", max_rows=100)
    assert rows.height == 100 and cut
    with pytest.raises(queries.SqlRejected, match="longer than"):
        queries.run_console("SELECT count(*) FROM range(100000000000) a", timeout_s=0.5)
    with pytest.raises(queries.SqlError, match="nosuch"):
        queries.run_console("SELECT * FROM nosuch")
