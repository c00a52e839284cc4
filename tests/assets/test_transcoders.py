"""Assets `transcoders` and `splice_metrics` on the tiny model, end to end through Dagster's materialize():
rows and weights written, gate recorded and enforced by blocking checks, re-runs replace rows."""

from __future__ import annotations

import dagster as dg
import pytest
import torch

from assets import activations as act_assets
from assets import corpus as corpus_assets
from assets import transcoders as tc_assets
from storage import db
from storage import transcoders as tc_store

TRAIN = {
    "expansion_factor": 2,
    "k": 4,
    "batch_size": 64,
    "train_tokens": 64 * 30,
    "lr": 3e-3,
    "lr_warmup_steps": 3,
    "checkpoint_every": 10,
    "eval_contexts": 3,
    "eval_batch_size": 3,
    "max_fvu": 10.0,
    "max_dead_frac": 1.0,
    "min_ce_recovered": -1e9,
}


@pytest.fixture
def harvested(tiny_atlas, monkeypatch):
    monkeypatch.setenv("ATLAS_DEVICE", "cpu")
    acts = act_assets.ActivationsConfig(train_contexts=12, eval_contexts=3, batch_size=4, shard_tokens=64)
    tags = {"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "2"}
    result = dg.materialize(
        [corpus_assets.contexts, corpus_assets.vocab, act_assets.activations],
        run_config=dg.RunConfig(
            ops={"contexts": corpus_assets.CorpusConfig(ctx_len=16), "activations": acts}
        ),
        tags=tags,
    )
    assert result.success
    return tiny_atlas


def _train(layer: str, **overrides) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [tc_assets.transcoders, *tc_assets.CHECKS],
        partition_key=layer,
        run_config={"ops": {"transcoders": {"config": {**TRAIN, **overrides}}}},
        raise_on_error=False,
    )


def _count(table: str, tid: str) -> int:
    return db.query(f"SELECT count(*) AS n FROM {table} WHERE transcoder_id = ?", [tid])["n"][0]


def test_transcoders_asset_writes_rows_weights_and_passing_checks(harvested, tiny_model_dir):
    result = _train("2")
    assert result.success
    listed = tc_store.list_transcoders(tiny_model_dir)
    assert listed["layer"].to_list() == [2]
    tid = listed["transcoder_id"][0]
    assert tid == tc_store.transcoder_id(tiny_model_dir, 2, "topk", 64)
    row = listed.row(0, named=True)
    assert row["train_tokens"] == 64 * 30 and 0 < row["l0"] <= 4 and row["n_ce_tokens"] == 3 * 15
    assert row["ce_clean"] > 0 and row["gate_passed"]
    assert tc_store.gate_status(tid) == (True, "")
    assert _count("training_curves", tid) == 3  # log_every 10 steps of 30
    evals = result.get_asset_check_evaluations()
    assert len(evals) == 3 and all(e.passed for e in evals)
    tc = tc_store.load_transcoder(tid)
    assert tc.cfg.layer == 2 and tc.cfg.hook_name == "blocks.2.ln2.hook_normalized"
    assert len(tc_store.transcoder_row(tid)["config"]["y_mean"]) == tc.cfg.d_out
    # re-running replaces the rows (same id), with no duplicates and a new curve
    assert _train("2", seed=1).success
    assert _count("transcoders", tid) == 1 and _count("transcoder_metrics", tid) == 1
    assert _count("training_curves", tid) == 3
    tc2 = tc_store.load_transcoder(tid)
    assert not torch.equal(tc.W_enc, tc2.W_enc)


def test_failed_gate_is_recorded_and_blocks(harvested, tiny_model_dir):
    result = _train("0", min_ce_recovered=5.0, max_dead_frac=0.0)
    tid = tc_store.list_transcoders(tiny_model_dir)["transcoder_id"][0]
    passed, reason = tc_store.gate_status(tid)
    assert not passed and "ce_recovered" in reason and "< 5.0" in reason
    by_name = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert by_name["transcoder_ce_recovered"] is False and by_name["transcoder_fvu"] is True


def test_splice_metrics_splices_every_trained_layer(harvested, tiny_model_dir):
    assert _train("0").success and _train("2").success
    assert dg.materialize(
        [tc_assets.splice_metrics], run_config={"ops": {"splice_metrics": {"config": {"eval_contexts": 3}}}}
    ).success
    rows = db.query("SELECT * FROM splice_metrics")
    assert rows.height == 1 and rows["layers"][0] == "0,2" and len(rows["transcoder_ids"][0]) == 2
    assert rows["n_eval_tokens"][0] == 3 * 15 and rows["kl"][0] > 0
    single = tc_store.list_transcoders(tiny_model_dir)
    assert rows["ce_clean"][0] == pytest.approx(single["ce_clean"][0], rel=1e-5)  # same held-out tokens
