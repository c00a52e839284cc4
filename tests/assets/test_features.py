"""Assets `features` and `feature_tokens` on the tiny model: stored activations equal a fresh forward pass,
re-runs replace rows, a layer whose transcoder failed its gate is skipped with its reason and its rows removed."""

from __future__ import annotations

import os

import dagster as dg
import polars as pl
import pytest
import torch

from assets.features import feature_tokens, features, features_have_examples, neuronpedia_export
from assets.resources import AtlasModel
from interp.model import mlp_hooks
from storage import corpus as corpus_store
from storage import features as feature_store
from storage import transcoders as tc_store
from storage.db import readers
from tests.assets.runs import materialize
from tests.storage.test_features import D_SAE, N_CTX, build_atlas

MINER = {"n_top": 6, "window": 8, "window_left": 5, "mining_contexts": N_CTX, "forward_batch": 5}
SMALL = {"ops": {"features": {"config": MINER}}}
SHARDS = {"ops": {"features": {"config": {**MINER, "source": "shards"}}}}


@pytest.fixture
def atlas(atlas_home, tiny_model, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ATLAS_MODEL", tiny_model_dir)  # the model of every run (tests.assets.runs)
    return build_atlas(tiny_model, tiny_model_dir, {1: True, 2: False})


def _run(assets, key: str, config: dict | None = None) -> dg.ExecuteInProcessResult:
    return materialize(assets, partition_key=key, run_config=config or {}, raise_on_error=True)


def _count(table: str, tid: str) -> int:
    return readers.query(f"SELECT count(*) AS n FROM {table} WHERE transcoder_id = ?", [tid])["n"][0]


@pytest.mark.parametrize("config", [SMALL, SHARDS], ids=["stream", "shards"])
def test_top_examples_equal_a_fresh_forward_pass(atlas, tiny_model, config):
    tid = atlas[1]
    _run([features], "1", config)
    ex = readers.query(
        "SELECT feature, context_id, position, activation, window_start, token_acts FROM feature_examples "
        "WHERE transcoder_id = ? AND kind = 'top' AND rank = 0 ORDER BY feature",
        [tid],
    )
    assert ex.height > D_SAE // 2  # most random features fire somewhere
    tc = tc_store.load_transcoder(tid)
    tokens = corpus_store.contexts_by_id(ex["context_id"].to_list())  # [n, ctx_len]
    hook = mlp_hooks(1)[0]
    with torch.no_grad():  # independent fresh pass: one context at a time, full model, float32
        z = torch.stack(
            [tc.encode(tiny_model.run_with_cache(t[None], names_filter=hook)[1][hook][0]) for t in tokens]
        )
    for i, row in enumerate(ex.iter_rows(named=True)):
        fresh = float(z[i, row["position"], row["feature"]])
        assert row["activation"] == pytest.approx(fresh, rel=1e-3, abs=1e-6)
        span = z[i, row["window_start"] : row["window_start"] + 8, row["feature"]]
        assert torch.tensor(row["token_acts"]) == pytest.approx(span, rel=1e-3, abs=1e-5)
        assert row["activation"] == pytest.approx(float(z[i, 1:, row["feature"]].max()), rel=1e-3)  # the max
    labels = readers.query("SELECT label FROM features WHERE transcoder_id = ? AND n_active > 0", [tid])[
        "label"
    ]
    assert labels.str.len_chars().min() > 0
    assert features_have_examples(atlas_model=AtlasModel()).passed


def test_rerun_replaces_rows_and_failed_gate_skips_layer(atlas, tiny_model, tiny_model_dir):
    tid1, tid2 = atlas[1], atlas[2]
    _run([features], "1", SMALL)
    first = {t: _count(t, tid1) for t in feature_store.MINED_TABLES}
    _run([features], "1", SMALL)
    assert {t: _count(t, tid1) for t in feature_store.MINED_TABLES} == first
    # layer 2's transcoder failed its gate: skipped with the reason, nothing written
    result = _run([features], "2", SMALL)
    meta = result.asset_materializations_for_node("features")[0].metadata
    assert "failed its quality gate" in meta["L2_skipped"].value and "fvu" in meta["L2_skipped"].value
    assert _count("features", tid2) == 0
    # a layer that had rows and is re-trained into a failing transcoder loses its rows
    tc = tc_store.load_transcoder(tid1)
    tc_store.save_transcoder(tc, tid1, {}, 0, pl.DataFrame(), {"gate_passed": False, "gate_reason": "dead"})
    _run([features], "1", SMALL)
    assert all(_count(t, tid1) == 0 for t in feature_store.MINED_TABLES)


def test_feature_tokens_and_cross_layer_neighbors(atlas, tiny_model, tiny_model_dir):
    tid1 = atlas[1]
    build_atlas(tiny_model, tiny_model_dir, {0: True})  # a second gated layer to be neighbours with
    tid0 = tc_store.transcoder_id(tiny_model_dir, 0, "relu", D_SAE)
    _run([feature_tokens], "1", {"ops": {"feature_tokens": {"config": {"n_tokens": 5, "n_neighbors": 4}}}})
    tok = readers.query(
        "SELECT kind, count(*) AS n FROM feature_tokens WHERE transcoder_id = ? GROUP BY kind", [tid1]
    )
    assert dict(tok.iter_rows()) == {"deembed": 5 * D_SAE, "logit_top": 5 * D_SAE, "logit_bottom": 5 * D_SAE}
    nb = readers.query("SELECT * FROM feature_neighbors WHERE transcoder_id = ?", [tid1])
    assert nb.height == 4 * D_SAE and set(nb["nb_transcoder_id"]) <= {tid0, tid1}
    assert not nb.filter((nb["nb_transcoder_id"] == tid1) & (nb["nb_feature"] == nb["feature"])).height
    W = {t: tc_store.load_transcoder(t).W_dec for t in (tid0, tid1)}
    for row in nb.head(20).iter_rows(named=True):  # stored cosines are real cosines
        cos = torch.cosine_similarity(
            W[tid1][row["feature"]], W[row["nb_transcoder_id"]][row["nb_feature"]], dim=0
        )
        assert row["cosine"] == pytest.approx(float(cos), abs=1e-5)
    _run([features], "1", SMALL)
    result = _run([neuronpedia_export], "1")
    path = result.asset_materializations_for_node("neuronpedia_export")[0].metadata["L1_path"].value
    assert os.path.exists(os.path.join(path, "features", "batch-0.jsonl.gz"))
    W_U = tiny_model.W_U.detach()
    top = readers.query(
        "SELECT feature, token_id FROM feature_tokens WHERE transcoder_id = ? AND kind = 'logit_top' AND rank = 0",
        [tid1],
    )
    for f, t in top.head(10).iter_rows():
        assert t == int((W[tid1][f] @ W_U).argmax())


@pytest.mark.slow
def test_real_model_top_examples_equal_a_fresh_forward_pass(real_data, atlas_home, monkeypatch):
    """SmolLM2 layer 2: every feature's stored top activation equals a fresh float32 forward pass (rel 1e-3)."""
    from interp.model import load_model

    os.makedirs(os.path.join(atlas_home, "models"))
    os.symlink(
        os.path.join(real_data["models"], "smollm2-135m"), os.path.join(atlas_home, "models", "smollm2-135m")
    )
    monkeypatch.setenv("ATLAS_MODEL", "smollm2-135m")
    model = load_model("smollm2-135m", device="cpu", cache_dir=os.path.join(atlas_home, "models"))
    text = (
        "The Congress shall have power to lay and collect taxes, duties, imposts and excises, to pay the debts and "
        "provide for the common defence and general welfare of the United States. We the people of America, in "
        "order to form a more perfect union, establish justice, insure domestic tranquility, and secure the "
        "blessings of liberty to ourselves and our posterity, do ordain and establish this Constitution. "
    ) * 8
    ids = model.tokenizer(text)["input_ids"]
    body = torch.tensor([t for t in ids if t != model.tokenizer.bos_token_id][: 12 * 47]).view(12, 47)
    tokens = torch.cat([torch.full((12, 1), model.tokenizer.bos_token_id), body], 1)  # [12, 48], BOS first
    vocab = [model.tokenizer.decode([i]) for i in range(model.cfg.d_vocab)]
    tid = build_atlas(model, "smollm2-135m", {2: True}, tokens=tokens, vocab=vocab, d_sae=256)[2]
    _run([features], "2", {"ops": {"features": {"config": {**MINER, "mining_contexts": 12}}}})
    ex = readers.query(
        "SELECT feature, context_id, position, activation FROM feature_examples "
        "WHERE transcoder_id = ? AND kind = 'top' AND rank = 0 ORDER BY feature",
        [tid],
    )
    assert ex.height > 200
    tc = tc_store.load_transcoder(tid)
    hook = mlp_hooks(2)[0]
    ctx = corpus_store.contexts_by_id(ex["context_id"].unique().to_list())
    with torch.no_grad():
        z = {
            int(c): tc.encode(model.run_with_cache(t[None], names_filter=hook)[1][hook][0])
            for c, t in zip(ex["context_id"].unique().to_list(), ctx)
        }
    for f, c, p, act in ex.iter_rows():
        assert act == pytest.approx(float(z[c][p, f]), rel=1e-3)
