"""storage/queries.py: the app's read API and the sandboxed SQL console, against the fixture atlas."""

from __future__ import annotations

import pytest

from storage import queries
from storage.db import readers
from tests.app.fixture_db import (
    D_SAE,
    DEAD_FEATURE,
    FIRST_FEATURE,
    HOSTILE_FEATURE,
    IMG,
    SCRIPT,
    TOKEN_FEATURE,
)


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
    ctx = readers.query("SELECT tokens FROM contexts WHERE context_id = 0")["tokens"][0].to_list()
    vocab = dict(
        readers.query("SELECT token_id, token_str FROM vocab WHERE model = ?", [atlas["model"]]).iter_rows()
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
    with pytest.raises(ValueError, match="show"):
        queries.search_features(show="everything")


def test_search_features_flags_artifacts_and_dead_features_and_hides_them_by_default(atlas):
    everything = queries.search_features(show="all")
    assert everything.height == 2 * D_SAE
    status = {(r["layer"], r["feature"]): r["status"] for r in everything.iter_rows(named=True)}
    for layer in (0, 1):
        assert status[(layer, FIRST_FEATURE)] == queries.ARTIFACT_FIRST  # every top example at position 1
        assert status[(layer, TOKEN_FEATURE)] == queries.ARTIFACT_TOKEN  # one token, density 0.2
        assert status[(layer, DEAD_FEATURE)] == queries.DEAD
        # the hostile feature's examples are one token too, but it fires on 2% of tokens: not "everywhere"
        assert status[(layer, HOSTILE_FEATURE)] == ""
    assert sum(v == "" for v in status.values()) == 2 * (D_SAE - 3)
    first = everything.filter(everything["feature"] == FIRST_FEATURE).row(0, named=True)
    assert (first["n_top"], first["bos_share"]) == (3, 1.0)

    live = queries.search_features()  # the default: live features by the contexts they fire in
    assert live.height == 2 * (D_SAE - 3) and set(live["status"]) == {""}
    assert live["n_contexts"].is_sorted(descending=True)
    artifacts = queries.search_features(show="artifacts")
    assert sorted(artifacts["feature"]) == sorted([FIRST_FEATURE, TOKEN_FEATURE] * 2)
    dead = queries.search_features(show="dead")
    assert list(dead["feature"]) == [DEAD_FEATURE] * 2 and (dead["n_active"] == 0).all()


def test_feature_card_carries_the_feature_status(atlas):
    tid = atlas["transcoders"][0]
    assert queries.feature_card(tid, FIRST_FEATURE)["flags"]["status"] == queries.ARTIFACT_FIRST
    assert queries.feature_card(tid, DEAD_FEATURE)["flags"]["status"] == queries.DEAD
    assert queries.feature_card(tid, HOSTILE_FEATURE)["flags"]["status"] == ""


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("CREATE TABLE x (a INTEGER)", "read-only: CREATE"),
        ("INSERT INTO vocab VALUES ('m', 1, 'x')", "read-only: INSERT"),
        ("COPY features TO 'out.csv'", "read-only: COPY"),
        ("ATTACH 'other.duckdb' AS o", "read-only: ATTACH"),
        ("INSTALL httpfs", "read-only: INSTALL statements"),
        ("FORCE INSTALL httpfs", "read-only: FORCE INSTALL statements"),
        ("LOAD httpfs", "read-only: LOAD statements"),
        ("CHECKPOINT", "read-only: CHECKPOINT statements"),
        ("FORCE CHECKPOINT", "read-only: FORCE CHECKPOINT statements"),
        ("CALL pragma_version()", "read-only: CALL statements"),
        ("SET enable_external_access = true", "read-only: SET statements"),
        ("RESET memory_limit", "read-only: RESET statements"),
        ("USE memory", "read-only: USE statements"),
        ("PRAGMA version", "read-only: PRAGMA statements"),
        ("VACUUM", "read-only: VACUUM statements"),
        ("DETACH atlas", "read-only: DETACH statements"),
        ("EXPORT DATABASE 'dump'", "read-only: EXPORT statements"),
        ("CREATE SECRET (TYPE s3, KEY_ID 'k', SECRET 's')", "read-only: CREATE statements"),
        ("UPDATE features SET label = 'x'", "read-only: UPDATE statements"),
        ("DELETE FROM features", "read-only: DELETE statements"),
        ("WITH x AS (SELECT 1) INSERT INTO vocab SELECT 'm', 1, 'x'", "read-only: INSERT statements"),
        ("EXPLAIN COPY features TO 'out.csv'", "read-only: EXPLAIN COPY statements"),
        ("EXPLAIN ANALYZE COPY features TO 'out.csv'", "read-only: EXPLAIN COPY statements"),
        ("explain analyze /* c */ copy features to 'out.csv'", "read-only: EXPLAIN COPY statements"),
        ("EXPLAIN (ANALYZE, FORMAT JSON) COPY features TO 'out.csv'", "read-only: EXPLAIN COPY statements"),
        ("EXPLAIN ANALYZE INSERT INTO vocab VALUES ('m', 1, 'x')", "read-only: EXPLAIN INSERT statements"),
        ("EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1", "read-only: EXPLAIN CREATE statements"),
        ("EXPLAIN ANALYZE PRAGMA version", "read-only: EXPLAIN PRAGMA statements"),
        ("EXPLAIN ANALYZE SELECT 1; SELECT 2", "one statement"),
        ("SELECT 1; DROP TABLE features", "one statement"),
        ("SELECT * FROM read_csv('/etc/passwd')", "cannot read or write files"),
        ("SELECT * FROM read_parquet('/etc/hosts')", "cannot read or write files"),
        ("SELEC 1", "Could not parse"),
    ],
)
def test_console_rejects_anything_but_one_read(atlas, sql, message):
    with pytest.raises(queries.SqlRejected, match=message):
        queries.run_console(sql)
    assert readers.query("SELECT count(*) AS n FROM features")["n"][0] == 2 * D_SAE  # nothing changed


def test_explain_analyze_copy_into_the_temp_folder_writes_nothing(atlas):
    """DuckDB always lets a connection write into its temp folder (<db>.tmp); the console must never get there."""
    from pathlib import Path

    from storage import layout

    tmp = Path(layout.db_path() + ".tmp")
    tmp.mkdir(exist_ok=True)
    for sql in (
        f"EXPLAIN ANALYZE COPY (SELECT 'pwned' AS x) TO '{tmp}/x.csv'",
        f"EXPLAIN ANALYZE COPY features TO '{tmp}/y.csv' (HEADER false)",
        f"EXPLAIN (ANALYZE) COPY (SELECT 1) TO '{tmp}/z.csv'",
    ):
        with pytest.raises(queries.SqlRejected, match="EXPLAIN COPY"):
            queries.run_console(sql)
    assert list(tmp.iterdir()) == []


def test_console_allows_explain_and_explain_analyze_of_reads(atlas):
    for sql in (
        "EXPLAIN SELECT * FROM features",
        "EXPLAIN ANALYZE SELECT count(*) FROM features",
        "EXPLAIN (FORMAT JSON) SELECT 1",
        "EXPLAIN ANALYZE (SELECT 1)",
        "-- a comment\nEXPLAIN ANALYZE FROM features",
    ):
        assert queries.run_console(sql)[0].height >= 1, sql


def test_console_runs_with_a_memory_limit_and_a_temp_space_limit(atlas):
    """The console's connection: at most 2 GB of memory, a small temp-space cap, no external access (DuckDB's
    defaults are 80% of RAM and 90% of the free disk)."""
    with queries.console_connection() as con:
        settings = queries.console_settings(con)
    assert queries._size_bytes(settings["memory_limit"]) <= 2 * 2**30, settings
    assert queries._size_bytes(settings["max_temp_directory_size"]) <= 2**30, settings
    assert settings["enable_external_access"] == "false", settings
    # a user cannot lift them: SET is refused before it reaches the connection
    with pytest.raises(queries.SqlRejected, match="SET"):
        queries.run_console("SET memory_limit = '100GB'")


def test_size_parsing_of_duckdb_settings():
    assert queries._size_bytes("953.6 MiB") == pytest.approx(
        953.6 * 2**20, rel=1e-9
    )  # parsing, float64 arithmetic
    assert queries._size_bytes("18.8 GiB") > 2 * 2**30 and queries._size_bytes("0 bytes") == 0
    assert queries._size_bytes("90% of available disk space") == float("inf")


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
