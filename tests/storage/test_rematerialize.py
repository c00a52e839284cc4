"""Re-materializing every asset of the chain twice (tiny model, through Dagster) leaves the same row counts and
no orphan file: a walk of $ATLAS_HOME finds under transcoders/ and activations/ exactly the files the databases
point to, no temporary leftovers, and no database row pointing to a missing file (docs/storage.md)."""

from __future__ import annotations

import os

import dagster as dg

from assets import activations as act_assets
from assets import circuits as circuit_assets
from assets import corpus as corpus_assets
from assets import features as feature_assets
from assets import transcoders as tc_assets
from storage import layout, schema
from storage.db import readers
from tests.assets.runs import materialize
from tests.assets.test_transcoders import TRAIN
from tests.storage import atlas_files

LAYERS = ("0", "1")
RANGE = {"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "1"}


def _materialize(assets: list, **kwargs) -> dg.ExecuteInProcessResult:
    return materialize(assets, layers=tuple(int(k) for k in LAYERS), **kwargs)


def _build() -> None:
    acts = act_assets.ActivationsConfig(train_contexts=12, eval_contexts=3, batch_size=4, shard_tokens=64)
    ok = _materialize(
        [corpus_assets.contexts, corpus_assets.vocab, act_assets.activations],
        run_config=dg.RunConfig(
            ops={"contexts": corpus_assets.CorpusConfig(ctx_len=16), "activations": acts}
        ),
        tags=RANGE,
    ).success
    assert ok
    for layer in LAYERS:
        run = {"ops": {"transcoders": {"config": TRAIN}}}
        assert _materialize([tc_assets.transcoders], partition_key=layer, run_config=run).success
        mine = {
            "ops": {
                "features": {"config": {"n_top": 4, "window": 6, "window_left": 3, "mining_contexts": 16}}
            }
        }
        assets = [feature_assets.features, feature_assets.feature_tokens]
        assert _materialize(assets, partition_key=layer, run_config=mine).success
    graphs = {"graphs": [{"prompt": "the cat sat", "target": 'logit:" "'}], "n_paths": 4, "n_steps": 2}
    run = {
        "ops": {
            "feature_edges": {"config": {"k": 3, "block": 16}},
            "attribution_graphs": {"config": {**graphs, "export_json": False}},
        }
    }
    assets = [circuit_assets.feature_edges, circuit_assets.attribution_graphs]
    assert _materialize(assets, run_config=run).success


def _counts() -> dict[str, int]:
    return {t.name: readers.query(f"SELECT count(*) AS n FROM {t.name}")["n"][0] for t in schema.TABLES}


def _managed_files(home: str) -> list[str]:
    return sorted(
        os.path.join(folder, name)
        for root in layout.managed_roots()
        for folder, _, names in os.walk(root)
        for name in names
    )


def test_rematerializing_twice_keeps_counts_and_leaves_no_orphans(tiny_atlas):
    _build()
    first, files_first = _counts(), _managed_files(tiny_atlas)
    assert first["feature_edges"] > 0 and first["graph_nodes"] > 0 and first["features"] > 0
    _build()
    assert _counts() == first
    assert atlas_files.orphans(tiny_atlas) == []
    for d in atlas_files.databases(tiny_atlas):
        assert atlas_files.dangling(d) == [], d
    files = _managed_files(tiny_atlas)
    assert len(files) == len(files_first) and set(files).isdisjoint(files_first)  # all rewritten, none left
    working = atlas_files.referenced(layout.db_path())
    assert all(any(f == r or f.startswith(r + "/") for r in working) for f in files)
    assert len(atlas_files.databases(tiny_atlas)) == 3  # the working copy, the current and previous snapshots
