"""The build as Dagster runs it (assets.build) on the tiny model: two layer ranges as separate concurrent runs, each
in its own process against one DAGSTER_HOME instance (the path a cluster run launcher takes), end in one consistent
atlas; a single run orders every asset itself and a layer that fails its gate does not stop the others."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest
import yaml

from assets import build, settings
from bench import build as bench_build
from storage import features as feature_store
from storage import layout
from storage import transcoders as tc_store
from storage.db import readers
from tests.assets.test_transcoders import TRAIN
from tests.storage import atlas_files

OPS = {  # tiny settings: a few hundred training tokens, a few evaluation and mining contexts
    "contexts": {"config": {"ctx_len": 16, "eval_fraction": 0.25}},
    "transcoders": {"config": TRAIN},
    "splice_metrics": {"config": {"eval_contexts": 3}},
    "features": {"config": {"n_top": 4, "window": 6, "window_left": 3, "mining_contexts": 8}},
    "feature_tokens": {"config": {"n_tokens": 3, "n_neighbors": 2}},
    "feature_edges": {"config": {"k": 3, "block": 16}},
    "attribution_graphs": {
        "config": {
            "graphs": [{"prompt": "the cat sat", "target": 'logit:" "'}],
            "n_paths": 4,
            "n_steps": 2,
            "export_json": False,
        }
    },
}


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> str:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return str(home)


def _range(run: dg.DagsterRun) -> tuple[int, int]:
    return int(run.tags[build.RANGE_START]), int(run.tags[build.RANGE_END])


def test_two_layer_ranges_run_concurrently_into_one_consistent_atlas(
    tiny_atlas, tiny_model_dir, dagster_home, capsys
):
    config = build.run_config(tiny_model_dir, "cpu", 1, OPS)
    seconds, failed = build.build(build.build_assets(), [0, 1, 2], config, runs=2)
    assert failed == {}
    instance = dg.DagsterInstance.get()
    records = instance.get_run_records()
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
    # before the ranges, the two ranges, after them (over all layers)
    assert sorted(_range(r.dagster_run) for r in records) == [(0, 1), (0, 2), (0, 2), (2, 2)]
    ranged = [r for r in records if _range(r.dagster_run) in ((0, 1), (2, 2))]
    # the ranges were separate runs of the layer steps, each in its own process, at the same time
    for record in ranged:
        assert set(record.dagster_run.asset_selection) == {
            dg.AssetKey("transcoders"),
            dg.AssetKey("features"),
        }
    pids = [
        {
            e.dagster_event.pid
            for e in instance.all_logs(r.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_START)
        }
        for r in ranged
    ]
    assert len(pids[0] | pids[1]) == 2 and not pids[0] & pids[1]
    assert max(r.start_time for r in ranged) < min(r.end_time for r in ranged)
    # one consistent atlas: every layer's rows, one current version per layer
    versions = tc_store.list_transcoders(tiny_model_dir, versions=True)
    assert versions.group_by("layer").agg(pl.col("is_current").sum()).sort("layer").rows() == [
        (0, 1),
        (1, 1),
        (2, 1),
    ]
    for tid in versions["transcoder_id"]:
        assert feature_store.coverage(tid)["live"] > 0  # mined by the range run of its layer
    # feature_tokens reads every layer: it ran after both ranges, so each layer's neighbours span the other range
    tid = dict(zip(versions["layer"], versions["transcoder_id"]))
    for layer, other in ((0, 2), (2, 0)):
        banks = readers.query(
            "SELECT DISTINCT nb_transcoder_id AS t FROM feature_neighbors WHERE transcoder_id = ?",
            [tid[layer]],
        )["t"]
        assert tid[other] in set(banks)
    assert readers.query("SELECT layers FROM splice_metrics")["layers"].to_list() == ["0,1,2"]
    assert readers.query("SELECT count(*) AS n FROM graphs")["n"][0] == 1
    # no file without a row, no row without its file
    assert atlas_files.orphans(tiny_atlas) == []
    for d in atlas_files.databases(tiny_atlas):
        assert atlas_files.dangling(d) == [], d
    # the per-step wall times bench/build.py reads
    with open(layout.join(tiny_atlas, build.BUILD_TIMES)) as f:
        record = json.load(f)
    assert record["failed"] == {} and record["layers"] == ["0", "1", "2"]
    assert set(record["seconds"]) >= {"contexts", "transcoders", "features", "attribution_graphs"}
    assert record["seconds"] == seconds and all(s > 0 for s in seconds.values())
    assert max(seconds.values()) < record["wall_seconds"]
    bench_build.main()
    printed = capsys.readouterr().out
    assert "3 layers" in printed and all(step in printed for step in seconds)


def test_the_command_runs_one_run_and_a_failed_gate_skips_mining_and_exits_1(
    tiny_atlas, tiny_model_dir, dagster_home, tmp_path
):
    ops = {**OPS, "transcoders": {"config": {**TRAIN, "max_fvu_typical": 0.0}}}  # every layer fails its gate
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"ops": ops}))
    with pytest.raises(SystemExit) as exit_:
        build.main(["--layers", "0,2", "--config", str(config)])  # the model: $ATLAS_MODEL (tiny_atlas)
    assert exit_.value.code == 1
    instance = dg.DagsterInstance.get()
    (record,) = instance.get_run_records()  # the whole atlas in one run over the layer range
    assert _range(record.dagster_run) == (0, 2) and record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    assert settings.atlas_layers(instance) == [0, 2]
    with open(layout.join(tiny_atlas, build.BUILD_TIMES)) as f:
        assert json.load(f)["failed"] == {build.GATE: ["0", "2"]}
    # mining skipped the failed layers; the steps over the whole atlas still ran, on their transcoders
    assert readers.query("SELECT count(*) AS n FROM features")["n"][0] == 0
    assert readers.query("SELECT count(*) AS n FROM graphs")["n"][0] == 1
    assert tc_store.list_transcoders(tiny_model_dir)["layer"].to_list() == [0, 2]
