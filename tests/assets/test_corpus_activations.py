"""The corpus and activation assets on the tiny model, through Dagster's own materialize()."""

import os

import dagster as dg
import pytest

from assets import activations as act_assets
from assets import corpus as corpus_assets
from storage import activations as act_store
from storage import corpus as corpus_store
from storage import layout
from storage.db import readers
from tests.assets.runs import materialize

SMALL = {"train_contexts": 6, "eval_contexts": 3, "batch_size": 4, "shard_tokens": 40}


def _run_config(**acts):
    return dg.RunConfig(
        ops={
            "contexts": corpus_assets.CorpusConfig(ctx_len=16),
            "activations": act_assets.ActivationsConfig(**SMALL, **acts),
        }
    )


def _materialize_all(tags=None, partition_key=None):
    return materialize(
        [corpus_assets.contexts, corpus_assets.vocab, act_assets.activations],
        run_config=_run_config(),
        partition_key=partition_key,
        tags=tags,
    )


def test_definitions_load():
    from assets.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"contexts", "vocab", "activations"} <= keys


def test_contexts_and_vocab_are_idempotent(tiny_atlas):
    for _ in range(2):
        result = materialize(
            [corpus_assets.contexts, corpus_assets.vocab],
            run_config=dg.RunConfig(ops={"contexts": corpus_assets.CorpusConfig(ctx_len=16)}),
        )
        assert result.success
    counts = readers.query(
        "SELECT count(*) n, count(DISTINCT context_id) d, min(len(tokens)) lo FROM contexts"
    )
    assert counts["n"][0] == counts["d"][0] > 50 and counts["lo"][0] == 16
    assert set(readers.query("SELECT DISTINCT split FROM contexts")["split"]) == {"train", "eval"}
    vocab = corpus_store.token_strings(os.environ["ATLAS_MODEL"])
    assert vocab[3] == "a"  # the tiny tokenizer maps id 3 to the character "a"


def test_empty_corpus_fails_without_touching_the_database(tiny_atlas, tmp_path):
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "blank.txt").write_text("")
    with pytest.raises(Exception, match="holds no text"):
        materialize(
            [corpus_assets.contexts],
            run_config=dg.RunConfig(ops={"contexts": corpus_assets.CorpusConfig(sources=[str(blank)])}),
        )
    assert (
        not os.path.exists(layout.db_path()) or readers.query("SELECT count(*) n FROM contexts")["n"][0] == 0
    )


def test_partition_range_harvests_all_layers_in_one_run_and_rerun_replaces(tiny_atlas):
    tags = {"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "2"}
    first = _materialize_all(tags=tags)
    assert first.success
    model = os.environ["ATLAS_MODEL"]
    manifest = readers.query(
        "SELECT layer, split, count(*) shards, sum(n_tokens) n FROM activation_shards GROUP BY ALL"
    )
    assert sorted(manifest["layer"].unique().to_list()) == [0, 1, 2]
    per_layer = manifest.filter(manifest["split"] == "train")["n"].to_list()
    assert per_layer == [6 * 15] * 3  # 6 contexts x (16 - BOS) positions per layer
    # re-materializing one layer replaces its rows and files: no duplicates, old run folder gone
    old_paths = set(act_store.shard_paths(model, 1, "train"))
    assert _materialize_all(partition_key="1").success
    new_paths = act_store.shard_paths(model, 1, "train")
    assert not old_paths & set(new_paths) and not any(os.path.exists(p) for p in old_paths)
    again = readers.query(
        "SELECT count(*) n, sum(n_tokens) t FROM activation_shards WHERE layer = 1 AND split = 'train'"
    )
    assert again["t"][0] == 6 * 15
    shard = act_store.read_shard(new_paths[0], ("context_id", "position", "x", "y"))
    assert (
        shard["x"].shape == (60, 32) and shard["position"].min() >= 1
    )  # shards close on whole batches (4 x 15)
