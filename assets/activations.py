"""Asset `activations`: MLP input/output of every atlas layer, harvested in one forward pass per batch.

Partitioned by layer; a range of partitions runs as ONE run (single-run backfill), so
`python -m assets.build --only activations` runs the model once for all the atlas's layers, stopping after the
highest. Shards go to a fresh run folder; the manifest is swapped in one transaction once every
shard exists, and storage's sweep deletes older run folders once no published snapshot points to them, so a
failure leaves the previous activations usable. Optional: `transcoders` and `features` stream from forward passes
by default; shards serve re-training a layer from stored activations (`source: shards`).
"""

import resource
import time
import uuid

import dagster as dg
import polars as pl
from tqdm import tqdm

from assets import settings
from assets.metadata import md_table
from assets.resources import AtlasModel
from interp.activations import harvest
from interp.model import mlp_hooks
from storage import activations as act_store
from storage import corpus as corpus_store
from storage import layout


class ActivationsConfig(dg.Config):
    # training shards are optional (`transcoders` streams from forward passes by default); set this to re-train a
    # layer from stored activations (`source: shards`): 2048 x 127 = 260k tokens, ~600 MB fp16 per SmolLM2 layer
    train_contexts: int = 0
    eval_contexts: int = 256  # held-out contexts for mining (32.5k tokens, ~75 MB fp16 per layer)
    seed: int = 2  # both samples are seeded and stratified by source
    batch_size: int = 32  # contexts per forward pass
    shard_tokens: int = 32768  # rows per Parquet shard, rounded up to whole batches (~75 MB at d_model 576)


def _harvest_split(
    atlas_model: AtlasModel,
    layers: list[int],
    split: str,
    n_contexts: int,
    config: ActivationsConfig,
    run: str,
):
    tokens, context_ids = corpus_store.sample_contexts(split, n_contexts, config.seed)
    order = context_ids.argsort()  # shards hold contiguous context-id ranges
    tokens, context_ids = tokens[order], context_ids[order]
    model, model_name = atlas_model.load(), atlas_model.model_name
    writer = act_store.ShardWriter(model_name, layers, split, run, config.shard_tokens)
    bar = tqdm(total=tokens.shape[0], desc=f"harvest {split} L{layers}", unit="ctx")
    t0 = time.perf_counter()
    try:
        for batch in harvest(model, tokens, context_ids, layers, config.batch_size):
            for layer, (x, y) in batch.acts.items():
                writer.add(layer, batch.context_id, batch.position, x.cpu(), y.cpu())
            bar.update(config.batch_size)
    finally:
        shards = writer.finish()
        bar.close()
    seconds = time.perf_counter() - t0
    d_model = model.cfg.d_model
    for layer, layer_shards in shards.items():
        hook_in, hook_out = mlp_hooks(layer)
        act_store.record_manifest(
            model_name,
            layer,
            split,
            layer_shards,
            {
                "hook_in": hook_in,
                "hook_out": hook_out,
                "d_model": d_model,
            },
        )
    n_tok = tokens.shape[0] * (tokens.shape[1] - 1)
    return n_tok, seconds, shards


@dg.asset(
    partitions_def=settings.layer_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["contexts"],
    group_name="activations",
    kinds={"parquet", "duckdb"},
)
def activations(
    context: dg.AssetExecutionContext, config: ActivationsConfig, atlas_model: AtlasModel
) -> dg.MaterializeResult:
    """x = blocks.L.ln2.hook_normalized and y = blocks.L.hook_mlp_out (fp16 Parquet shards + manifest rows)."""
    layers = settings.partition_layers(context)
    run = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    stats = {}
    for split, n in (("train", config.train_contexts), ("eval", config.eval_contexts)):
        if n == 0:  # not harvested: the old shards of this split go too
            for layer in layers:
                act_store.clear_manifest(atlas_model.model_name, layer, split)
            continue
        n_tok, seconds, shards = _harvest_split(atlas_model, layers, split, n, config, run)
        stats[split] = (n_tok, seconds, shards)
        context.log.info(
            f"harvested {n_tok} {split} tokens x {len(layers)} layers at {n_tok / seconds:.0f} tok/s"
        )
    n_bytes = sum(
        layout.fs_for(s.path).size(s.path) for _, _, sh in stats.values() for ls in sh.values() for s in ls
    )
    preview = act_store.read_shard(stats["eval"][2][layers[0]][0].path, ("x", "y"))
    norms = pl.DataFrame(
        {
            "layer": [layers[0]],
            "mean_norm_x": [preview["x"].norm(dim=-1).mean().item()],
            "mean_norm_y": [preview["y"].norm(dim=-1).mean().item()],
        }
    )
    if "eval" not in stats:
        raise ValueError(
            "eval_contexts is 0: mining needs held-out activations; harvest at least one context."
        )
    n_tok, n_s = sum(v[0] for v in stats.values()), sum(v[1] for v in stats.values())
    return dg.MaterializeResult(
        metadata={
            "layers": str(layers),
            "rows_per_layer": {s: v[0] for s, v in stats.items()},
            "bytes": n_bytes,
            "storage_dtype": act_store.STORAGE_DTYPE,
            "tokens_per_s": round(n_tok / n_s),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "preview": md_table(norms),
            "run": run,
        }
    )


ASSETS = [activations]
CHECKS: list = []
