"""Every example query runs on a small real atlas (tiny model, mined by the assets) and returns what an
independent recomputation in Python says it should."""

from __future__ import annotations

import pytest

from assets.features import feature_tokens, features
from storage import corpus as corpus_store
from storage import example_queries as eq
from storage import features as feature_store
from storage.db import readers, working_copy
from tests.assets.runs import materialize
from tests.storage.test_features import N_CTX, build_atlas


@pytest.fixture
def atlas(atlas_home, tiny_model, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ATLAS_MODEL", tiny_model_dir)
    ids = build_atlas(tiny_model, tiny_model_dir, {1: True, 2: True})
    config = {
        "ops": {"features": {"config": {"n_top": 6, "window": 8, "window_left": 5, "mining_contexts": N_CTX}}}
    }
    for key in ("1", "2"):
        materialize([features, feature_tokens], partition_key=key, run_config=config, raise_on_error=True)
    return ids


def test_every_example_query_runs_and_answers_its_question(atlas):
    vocab = corpus_store.token_strings(readers.query("SELECT model FROM transcoders LIMIT 1")["model"][0])
    a = vocab.index("A")  # the token planted at position 5 of every context

    got = eq.run("features_by_density_and_token", layer=1, min_density=0.0, max_density=0.5, token="A")
    ex = readers.query(
        "SELECT e.feature, e.window_start, len(e.token_acts) AS w, c.tokens, f.density FROM feature_examples e "
        "JOIN contexts c USING (context_id) JOIN features f USING (transcoder_id, feature) "
        "WHERE e.transcoder_id = ? AND e.kind = 'top'",
        [atlas[1]],
    )
    expected: dict[int, int] = {}
    for f, start, w, tokens, density in ex.iter_rows():
        if density <= 0.5 and a in tokens[start : start + w]:
            expected[f] = expected.get(f, 0) + 1
    assert expected and dict(zip(got["feature"], got["n_examples"])) == expected

    fire = eq.run("features_firing_on_token", token="A", limit=5)
    assert fire.height == 5 and fire["mean_act"].is_sorted(descending=True)
    index = readers.query(
        "SELECT mean_act FROM token_features WHERE token_id = ? ORDER BY mean_act DESC LIMIT 5", [a]
    )
    assert fire["mean_act"].to_list() == index["mean_act"].to_list()

    promo = eq.run("features_promoting_token", token="A", limit=3)
    assert promo["value"].is_sorted(descending=True) and (promo["value"] > 0).all()

    health = eq.run("feature_health_by_layer")
    assert health["layer"].to_list() == [1, 2] and (health["n_features"] == 64).all()

    twins = eq.run("cross_layer_twins", min_cosine=-1.0, limit=10)
    assert twins.height == 10 and (twins["layer"] != twins["nb_layer"]).all()

    top = readers.query(
        "SELECT feature FROM feature_examples WHERE transcoder_id = ? AND kind = 'top' AND rank = 0 LIMIT 1",
        [atlas[1]],
    )["feature"][0]
    text = eq.run("strongest_examples_of_feature", layer=1, feature=int(top))
    assert text["rank"].to_list() == list(range(text.height)) and (text["text"].str.len_chars() == 8).all()
    assert text["activation"].is_sorted(descending=True)


def test_every_example_returns_rows_with_the_defaults_drawn_from_the_atlas(atlas):
    """The app opens each example with `defaults(name)`: on a built atlas every one must return rows (the old
    fixed defaults asked for layer 5, which this atlas, like the default one, lacks)."""
    layers = set(readers.query("SELECT layer FROM transcoders")["layer"])
    for q in eq.QUERIES:
        params = eq.defaults(q.name)
        assert set(params) == set(q.params) and all(
            isinstance(params[k], type(v)) for k, v in q.params.items()
        ), (q.name, params)
        if "layer" in params:
            assert params["layer"] in layers, (q.name, params)
        rows = eq.run(q.name)
        assert rows.height > 0, (q.name, params)
    # the token a default picks is the one most features fire on (the tiny tokenizer has no word tokens to prefer)
    token = eq.defaults("features_firing_on_token")["token"]
    counts = readers.query(
        "SELECT v.token_str, count(*) AS n FROM token_features tf JOIN vocab v USING (token_id) "
        "GROUP BY ALL ORDER BY n DESC"
    )
    assert token in counts["token_str"].to_list() and dict(counts.iter_rows())[token] == counts["n"].max()


def test_examples_keep_their_fallbacks_on_an_empty_atlas(atlas_home):
    with working_copy.writer():  # migrated, nothing materialized
        pass
    for q in eq.QUERIES:
        assert eq.defaults(q.name) == q.params


def test_feature_card_reads_everything_in_one_query(atlas):
    tid = atlas[1]
    f = int(
        readers.query("SELECT feature FROM features WHERE transcoder_id = ? ORDER BY n_active DESC", [tid])[
            "feature"
        ][0]
    )
    card = feature_store.feature_card(tid, f)
    row = readers.query("SELECT * FROM features WHERE transcoder_id = ? AND feature = ?", [tid, f]).row(
        0, named=True
    )
    assert card["stats"]["label"] == row["label"] and card["stats"]["layer"] == 1
    kinds = [e["kind"] for e in card["examples"]]
    assert kinds[0] == "top" and kinds.count("top") == 6
    bands = [k for k in kinds if k != "top"]
    assert bands == sorted(bands, reverse=True)  # strongest band first
    model = card["stats"]["model"]
    vocab = corpus_store.token_strings(model)
    for e in card["examples"]:
        ctx = corpus_store.contexts_by_id([e["context_id"]])[0].tolist()
        start = e["position"] - e["highlight"]
        assert e["tokens"] == [vocab[t] for t in ctx[start : start + len(e["tokens"])]]
        assert e["acts"][e["highlight"]] == pytest.approx(
            e["activation"], rel=1e-6
        )  # both REAL (float32) columns: the same stored value
    assert set(card["token_effects"]) == {"deembed", "logit_top", "logit_bottom"}
    assert len(card["neighbors"]) == 10 and card["neighbors"][0]["cosine"] >= card["neighbors"][-1]["cosine"]
    assert feature_store.feature_card(tid, 10_000) is None


def test_unknown_parameter_is_a_clear_error():
    with pytest.raises(ValueError, match="parameters"):
        eq.run("cross_layer_twins", min_cos=0.5)
    assert "## features_by_density_and_token" in eq.markdown()
