"""storage/queries.py: the app's read API, against the fixture atlas."""

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


def test_reading_a_missing_atlas_says_how_to_build_it(atlas_home):
    with pytest.raises(FileNotFoundError, match="make atlas"):
        queries.transcoders()


def test_feature_card_examples_are_the_context_windows_with_their_activations(fixture_atlas):
    tid = fixture_atlas["transcoders"][0]
    card = queries.feature_card(tid, HOSTILE_FEATURE)
    top = card["examples"][0]
    assert (top["kind"], top["rank"], top["activation"]) == ("top", 0, 2.0)
    # independent: the window is contexts.tokens[1:9] decoded through vocab
    ctx = readers.query("SELECT tokens FROM contexts WHERE context_id = 0")["tokens"][0].to_list()
    vocab = dict(
        readers.query(
            "SELECT token_id, token_str FROM vocab WHERE model = ?", [fixture_atlas["model"]]
        ).iter_rows()
    )
    assert top["tokens"] == [vocab[i] for i in ctx[1:9]]
    assert top["tokens"][3:5] == [SCRIPT, IMG] and top["acts"][4] == 2.0 and top["highlight"] == 4
    assert [e["kind"] for e in card["examples"]] == ["top"] * 3 + ["q1"] * 2 + ["q0"] * 2
    assert card["token_effects"]["deembed"][0] == (SCRIPT, 1.0)
    assert [(u["feature"], u["layer"]) for u in card["downstream"]] == [(HOSTILE_FEATURE, 1)]
    assert queries.feature_card(tid, 999) is None


def test_search_features_by_token_label_layer_and_density(fixture_atlas):
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


def test_search_features_flags_artifacts_and_dead_features_and_hides_them_by_default(fixture_atlas):
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


def test_feature_card_carries_the_feature_status(fixture_atlas):
    tid = fixture_atlas["transcoders"][0]
    assert queries.feature_card(tid, FIRST_FEATURE)["flags"]["status"] == queries.ARTIFACT_FIRST
    assert queries.feature_card(tid, DEAD_FEATURE)["flags"]["status"] == queries.DEAD
    assert queries.feature_card(tid, HOSTILE_FEATURE)["flags"]["status"] == ""
