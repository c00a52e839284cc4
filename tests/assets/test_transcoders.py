"""Assets `transcoders` and `splice_metrics` on the tiny model, end to end through Dagster's materialize():
every layer of a run trained from one streaming pass, versions side by side with a current one, the gate recorded
and reported by its check, goals as warnings, bad input refused before any work."""

from __future__ import annotations

import dataclasses
import pathlib

import dagster as dg
import polars as pl
import pytest
import torch

from assets import activations as act_assets
from assets import corpus as corpus_assets
from assets import transcoders as tc_assets
from interp.quality import Thresholds
from interp.train import TrainConfig, Trainer
from interp.transcoder import EXPANSION_FACTOR, TranscoderConfig
from storage import transcoders as tc_store
from storage.db import readers
from tests.assets.runs import TINY_LAYERS, materialize

TRAIN = {
    "expansion_factor": 2,
    "k": 4,
    "batch_size": 64,
    "train_tokens": 64 * 30,
    "buffer_tokens": 256,
    "forward_batch": 4,
    "lr": 3e-3,
    "lr_warmup_steps": 3,
    "checkpoint_every": 10,
    "eval_contexts": 3,
    "eval_batch_size": 3,
    # a 30-step transcoder of a random model: these tests check the wiring, interp/test_quality the thresholds
    "max_fvu_typical": 10.0,
    "min_ce_recovered_blocking": -1e9,
}
ALL = {"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "2"}


@pytest.fixture
def corpus(tiny_atlas):
    result = materialize(
        [corpus_assets.contexts, corpus_assets.vocab],
        run_config=dg.RunConfig(ops={"contexts": corpus_assets.CorpusConfig(ctx_len=16, eval_fraction=0.25)}),
    )
    assert result.success
    return tiny_atlas


def _train(
    partition: str | None = None, tags: dict | None = None, layers=TINY_LAYERS, **overrides
) -> dg.ExecuteInProcessResult:
    return materialize(
        [tc_assets.transcoders, *tc_assets.CHECKS],
        layers=layers,
        partition_key=partition,
        tags=tags,
        run_config={"ops": {"transcoders": {"config": {**TRAIN, **overrides}}}},
        raise_on_error=False,
    )


def _count(table: str, tid: str) -> int:
    return readers.query(f"SELECT count(*) AS n FROM {table} WHERE transcoder_id = ?", [tid])["n"][0]


def test_one_run_trains_every_layer_and_versions_sit_side_by_side(corpus, tiny_model_dir):
    result = _train(tags=ALL)
    assert result.success
    listed = tc_store.list_transcoders(tiny_model_dir)
    assert listed["layer"].to_list() == [0, 1, 2]
    assert len(set(listed["transcoder_id"])) == 3
    row = listed.row(2, named=True)
    tid = row["transcoder_id"]
    assert tid.startswith(f"{tiny_model_dir}/L2/topk-64-") and row["is_current"]
    assert row["train_tokens"] == 64 * 30 and 0 < row["l0"] <= 4 and row["n_ce_tokens"] == 3 * 15
    assert row["ce_clean"] > 0 and row["gate_passed"] and row["fvu_typical"] is not None
    assert _count("training_curves", tid) == 3  # log_every 10 steps of 30
    by_name = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert by_name["transcoder_gate"].passed
    assert by_name["transcoder_goals"].severity == dg.AssetCheckSeverity.WARN
    tc = tc_store.load_transcoder(tid)
    assert tc.cfg.layer == 2 and tc.cfg.hook_name == "blocks.2.ln2.hook_normalized"
    assert len(tc_store.transcoder_row(tid)["config"]["y_mean"]) == tc.cfg.d_out

    # another seed is another version: both kept, the new one current
    assert _train("2", seed=1).success
    versions = tc_store.list_transcoders(tiny_model_dir, versions=True).filter(pl.col("layer") == 2)
    assert versions.height == 2
    new = versions.filter(pl.col("is_current"))["transcoder_id"][0]
    assert new != tid and not torch.equal(tc.W_enc, tc_store.load_transcoder(new).W_enc)
    # re-running the same recipe replaces its rows: same id, no duplicates
    assert _train("2", seed=1).success
    assert _count("transcoders", new) == 1 and _count("training_curves", new) == 3
    # the documented way back to an older version
    tc_store.set_current(tiny_model_dir, 2, tid)
    assert tc_store.list_transcoders(tiny_model_dir)["transcoder_id"][2] == tid
    with pytest.raises(ValueError, match="layer 2, not"):
        tc_store.set_current(tiny_model_dir, 1, tid)


def test_interval_stored_and_ablation_baseline_reused_across_versions(corpus, tiny_model_dir, monkeypatch):
    """CE recovered is stored with its bootstrap interval; the mean-ablated passes run once per (layer, mean,
    sample): another version of the layer on the same sample reuses them (a spy counts the passes), another eval
    sample does not."""
    from interp import evals

    calls = []
    real = evals.mean_ablated
    monkeypatch.setattr(evals, "mean_ablated", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert _train("0").success
    assert len(calls) == 1  # 3 contexts, one batch
    first = tc_store.list_transcoders(tiny_model_dir).row(0, named=True)
    assert first["n_eval_contexts"] == 3
    assert first["ce_recovered_lo"] <= first["ce_recovered"] <= first["ce_recovered_hi"]
    assert first["delta_ce_lo"] <= first["ce_spliced"] - first["ce_clean"] <= first["delta_ce_hi"]

    result = _train("0", k=3)  # another version: same training sample, so the same mean, same eval sample
    assert result.success and len(calls) == 1
    second = tc_store.list_transcoders(tiny_model_dir).row(0, named=True)
    assert second["transcoder_id"] != first["transcoder_id"]
    assert second["ce_ablated"] == pytest.approx(first["ce_ablated"], rel=1e-6)
    meta = result.asset_materializations_for_node("transcoders")[0].metadata
    assert meta["ablation_baselines_reused"].value == [0] and "ce_recovered_lo" in meta["metrics"].value
    half = (second["ce_recovered_hi"] - second["ce_recovered_lo"]) / 2
    assert meta["ce_recovered_max_half_width"].value == pytest.approx(half, rel=1e-5)
    nan = float("nan")
    rows = [
        {"ce_recovered_lo": nan, "ce_recovered_hi": nan},
        {"ce_recovered_lo": 0.5, "ce_recovered_hi": 0.7},
    ]
    assert tc_assets._max_half_width(rows) == pytest.approx(0.1)  # a layer without an interval is left out

    assert _train("0", k=3, eval_seed=2).success  # another sample: the cache misses
    assert len(calls) == 2
    assert readers.query("SELECT count(*) AS n FROM ablation_baselines")["n"][0] == 2


def test_failed_gate_is_recorded_and_blocks(corpus, tiny_model_dir):
    # goals apply where the MLP matters: count every layer as mattering, so the L0 goal of 0.5 is missed
    result = _train("0", max_fvu_typical=0.0, goal_l0=0.5, matters_delta_ce=-1.0)
    tid = tc_store.list_transcoders(tiny_model_dir)["transcoder_id"][0]
    passed, reason = tc_store.gate_status(tid)
    assert not passed and "fvu_typical" in reason and "> 0.0" in reason
    by_name = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert by_name["transcoder_gate"].passed is False
    assert by_name["transcoder_goals"].passed is False  # l0 above the 0.5 goal: a warning, not a block


def test_retraining_from_shards(corpus, tiny_model_dir):
    acts = act_assets.ActivationsConfig(train_contexts=12, eval_contexts=3, batch_size=4, shard_tokens=64)
    assert materialize(
        [act_assets.activations], run_config=dg.RunConfig(ops={"activations": acts}), tags=ALL
    ).success
    assert _train("1", source="shards").success
    row = tc_store.list_transcoders(tiny_model_dir).row(0, named=True)
    assert row["layer"] == 1 and tc_store.transcoder_row(row["transcoder_id"])["config"]["source"] == "shards"


def test_bad_input_fails_before_any_work(corpus, tiny_model_dir):
    result = _train("0", train_tokens=0)
    assert not result.success and "budget of at least one batch" in str(result.all_events)
    result = _train("7", layers=(7,))  # a layer partition the model does not have
    assert not result.success and "out of range" in str(result.all_events)
    assert readers.query("SELECT count(*) AS n FROM transcoders")["n"][0] == 0


def test_splice_metrics_splices_every_trained_layer(corpus, tiny_model_dir):
    assert _train(tags=ALL).success
    assert materialize(
        [tc_assets.splice_metrics], run_config={"ops": {"splice_metrics": {"config": {"eval_contexts": 3}}}}
    ).success
    rows = readers.query("SELECT * FROM splice_metrics")
    assert rows.height == 1 and rows["layers"][0] == "0,1,2" and len(rows["transcoder_ids"][0]) == 3
    assert rows["n_eval_tokens"][0] == 3 * 15 and rows["kl"][0] > 0
    single = tc_store.list_transcoders(tiny_model_dir)
    assert rows["ce_clean"][0] == pytest.approx(single["ce_clean"][0], rel=1e-5)  # same held-out tokens


def test_run_config_fields_are_interps_config_fields_with_their_defaults():
    fields = tc_assets.TranscoderTrainConfig.model_fields
    interp = [f for f in dataclasses.fields(TranscoderConfig) if f.name in ("architecture", "k", "skip")]
    interp += [f for f in dataclasses.fields(TrainConfig) if f.name != "device"]
    interp += dataclasses.fields(Thresholds)
    for f in interp:
        assert fields[f.name].default == f.default, f.name
    assert all(f.description for f in fields.values())  # the Dagster UI shows them
    assert fields["expansion_factor"].default == EXPANSION_FACTOR
    own = {"source", "expansion_factor", "forward_batch", "continue_from"}
    own |= {"eval_contexts", "eval_seed", "eval_batch_size"}
    assert set(fields) == own | {f.name for f in interp}
    assert tc_assets.SpliceConfig.model_fields["bf16"].default == TrainConfig.bf16

    # what a run config sets is what the interp configs get
    config = tc_assets.TranscoderTrainConfig(
        expansion_factor=3, architecture="relu", k=None, skip=False, lr=5e-4, buffer_tokens=512, goal_l0=9.0
    )
    assert config.train_config("cpu") == TrainConfig(lr=5e-4, buffer_tokens=512)
    assert config.thresholds() == Thresholds(goal_l0=9.0)
    tc_cfg = config.transcoder_config("m", 2, d_model=10)
    assert (tc_cfg.d_in, tc_cfg.d_sae, tc_cfg.architecture, tc_cfg.k, tc_cfg.skip) == (
        10,
        30,
        "relu",
        None,
        False,
    )
    assert (tc_cfg.hook_name, tc_cfg.hook_name_out, tc_cfg.layer) == (
        "blocks.2.ln2.hook_normalized",
        "blocks.2.hook_mlp_out",
        2,
    )


def _curve(tid: str) -> pl.DataFrame:
    return readers.query("SELECT * FROM training_curves WHERE transcoder_id = ? ORDER BY step", [tid])


def _file_bytes(folder: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).iterdir())}


def test_a_current_version_trains_further_into_a_new_version(corpus, tiny_model_dir, monkeypatch):
    assert _train("1", log_every=1).success
    parent = tc_store.list_transcoders(tiny_model_dir).row(0, named=True)
    pid, on_disk = parent["transcoder_id"], _file_bytes(parent["weights_path"])
    assert set(on_disk) == {"cfg.json", "sae_weights.safetensors", "train_state.safetensors"}
    saved_state = tc_store.load_train_state(pid)

    started = []  # the continued trainer as it starts: its weights (saved form) and Adam state
    continued = Trainer.continued.__func__

    def spy(cls, *args):
        t = continued(cls, *args)
        started.append(
            (t.finish(), {n: {k: v.clone() for k, v in st.items()} for n, st in t.train_state().adam.items()})
        )
        return t

    monkeypatch.setattr(Trainer, "continued", classmethod(spy))
    assert _train("1", log_every=1, continue_from="current").success
    child = tc_store.list_transcoders(tiny_model_dir).row(0, named=True)
    cid = child["transcoder_id"]
    assert cid != pid and child["is_current"] and child["train_tokens"] == 2 * 64 * 30
    config = tc_store.transcoder_row(cid)["config"]
    assert config["continue_from"] == pid and config["total_tokens"] == 2 * 64 * 30
    assert tc_store.load_transcoder(cid).cfg.provenance["continue_from"] == pid
    # it started from the parent's weights and optimiser state
    (start_tc, start_adam), parent_tc = started[0], tc_store.load_transcoder(pid)
    for name, value in parent_tc.state_dict().items():
        torch.testing.assert_close(start_tc.state_dict()[name], value, atol=1e-6, rtol=1e-5, msg=name)
    for name, st in saved_state.adam.items():
        for key, value in st.items():
            assert torch.equal(start_adam[name][key], value), (name, key)
    # so its curve carries on where the parent's ended, with no spike, and Adam's step count runs on
    before, after = _curve(pid), _curve(cid)
    assert (after["step"][0], after["tokens"][0]) == (31, 31 * 64)
    last = before["loss"].tail(5).mean()
    assert after["loss"].head(5).max() < 1.1 * last < 0.5 * before["loss"].head(5).mean()
    state = tc_store.load_train_state(cid)
    assert int(state.adam["W_enc"]["step"]) == state.step == 60
    # on new tokens: none of its contexts is one of the parent's
    seen_by_parent = set(saved_state.context_ids.tolist())
    seen = set(state.context_ids.tolist())
    assert seen_by_parent < seen and len(seen) == 2 * len(seen_by_parent)
    # the parent is kept as it was, loadable
    versions = tc_store.list_transcoders(tiny_model_dir, versions=True)
    assert set(versions["transcoder_id"]) == {pid, cid}
    assert _file_bytes(parent["weights_path"]) == on_disk
    assert tc_store.transcoder_row(pid)["train_tokens"] == 64 * 30


def test_continuing_needs_a_parent_of_the_asked_shape(corpus, tiny_model_dir):
    result = _train("0", continue_from="current")
    assert not result.success and "no transcoder to continue" in str(result.all_events)
    assert _train("0").success
    result = _train("0", continue_from="current", k=3)
    assert not result.success and "k 4 (asked 3)" in str(result.all_events)
    result = _train("0", continue_from="current", source="shards")
    assert not result.success and "needs source 'stream'" in str(result.all_events)
    assert readers.query("SELECT count(*) AS n FROM transcoders")["n"][0] == 1
