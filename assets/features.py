"""Assets `features` and `feature_tokens`: the feature database of every layer's transcoder.

`features` mines every layer of its run in one streaming pass (interp.features) and labels each feature. With
`source: stream` (the default) the pass is a float32 forward pass over a seeded, source-stratified sample of
held-out contexts (`mining_contexts`, 2,000 x 127 = 254k tokens), one pass for all layers of the run, so example
activations are exact; with `source: shards` it reads the `activations` asset's float16 eval shards of each layer
and re-encodes the example contexts with a float32 forward pass. `feature_tokens` computes
de-embeddings, logit effects and decoder-cosine neighbours across all gated layers. A layer whose transcoder
failed its quality gate is skipped: its old rows are removed and the reason is logged and put in the metadata.
"""

import time
from collections import defaultdict

import dagster as dg
import polars as pl
import torch

from assets import settings
from assets.metadata import md_table
from assets.resources import AtlasModel
from interp.features import MinerConfig, exact_examples, forward_chunks, fresh_encoder, mine, mine_layers
from interp.labels import label_from_tokens
from interp.neighbors import decoder_neighbors
from interp.token_effects import deembedding, logit_effects
from storage import activations as act_store
from storage import corpus as corpus_store
from storage import features as feature_store
from storage import neuronpedia
from storage import transcoders as tc_store


class FeaturesConfig(dg.Config):
    """Mining settings; defaults and meanings are those of interp.features.MinerConfig."""

    n_top: int = MinerConfig.n_top
    examples_per_context: int = MinerConfig.examples_per_context
    n_bands: int = MinerConfig.n_bands
    per_band: int = MinerConfig.per_band
    n_reservoir: int = MinerConfig.n_reservoir
    window: int = MinerConfig.window
    window_left: int = MinerConfig.window_left
    token_index_top: int = MinerConfig.token_index_top
    tokens_per_chunk: int = MinerConfig.tokens_per_chunk
    source: str = "stream"  # 'stream': forward passes over a held-out sample; 'shards': the eval shards
    mining_contexts: int = 2000  # stream: held-out contexts mined (x 127 tokens), stratified by source
    seed: int = 3  # stream: seeds the mining sample
    forward_batch: int = 16  # stream: contexts per forward pass
    exact_examples: bool = True  # shards: re-encode example contexts in float32 (shards hold float16 x)


class FeatureTokensConfig(dg.Config):
    n_tokens: int = 12  # tokens per kind (deembed, logit_top, logit_bottom)
    n_neighbors: int = 10  # decoder-cosine neighbours per feature, over all gated layers


def _layer_gate(
    context: dg.AssetExecutionContext, model: str, layer: int, tables: tuple[str, ...]
) -> tuple[str, str]:
    """(transcoder id, '') of the layer's current transcoder if it passed its quality gate (the rows of the layer's
    other versions are removed from `tables`), else (id, reason) after removing the layer's rows from `tables` (a
    failed transcoder must not keep stale features)."""
    rows = tc_store.list_transcoders(model).filter(pl.col("layer") == layer)
    if rows.height == 0:
        raise LookupError(
            f"No transcoder for {model} layer {layer}; materialize `transcoders` for that layer."
        )
    tid = rows["transcoder_id"][0]
    passed, reason = tc_store.gate_status(tid)
    if passed:  # the layer's other versions keep their weights and metrics, not their mined rows
        feature_store.clear_layer(model, layer, tables, keep=tid)
        return tid, ""
    feature_store.clear_layer(model, layer, tables)
    reason = f"transcoder {tid} failed its quality gate: {reason or 'no reason recorded'}"
    context.log.warning(f"skipping layer {layer}: {reason}; its rows in {', '.join(tables)} were removed")
    return tid, reason


def _gated_layers(
    context: dg.AssetExecutionContext, model: str, tables: tuple[str, ...]
) -> tuple[dict[int, str], dict]:
    """{layer: transcoder id} for the run's layers whose current transcoder passed its gate, and metadata naming
    why each other layer was skipped (`_layer_gate`)."""
    passed, metadata = {}, {}
    for layer in settings.partition_layers(context):
        tid, skipped = _layer_gate(context, model, layer, tables)
        if skipped:
            metadata[f"L{layer}_skipped"] = skipped
        else:
            passed[layer] = tid
    return passed, metadata


def _token_ids(tokens: torch.Tensor, context_ids: torch.Tensor):
    """Adds token_id to shard batches (looked up from the `contexts` table by context_id and position)."""
    row_of = torch.full((int(context_ids.max()) + 1,), -1, dtype=torch.long)
    row_of[context_ids] = torch.arange(len(context_ids))

    def add(batch: dict) -> dict:
        rows = row_of[batch["context_id"]]
        if (rows < 0).any():
            raise LookupError(
                "Activation shards reference contexts missing from `contexts`; re-materialize both."
            )
        return {**batch, "token_id": tokens[rows, batch["position"]]}

    return add


def _labels(stats, token_strs: list[str]) -> list[str]:
    ex = stats.examples
    toks, weights = defaultdict(list), defaultdict(list)
    for f, k, t, a in zip(ex.feature.tolist(), ex.kind, ex.token_id.tolist(), ex.activation.tolist()):
        if k == "top":
            toks[f].append(token_strs[t] if t < len(token_strs) else f"<{t}>")
            weights[f].append(a)
    return [label_from_tokens(toks[f], weights[f]) for f in range(len(stats.n_active))]


def _mine_layer(context, atlas_model: AtlasModel, layer: int, tid: str, config: FeaturesConfig) -> dict:
    model_name, device = atlas_model.model_name, atlas_model.torch_device
    tc = tc_store.load_transcoder(tid, device=device)
    tokens, context_ids = corpus_store.load_contexts("eval")
    add_tokens = _token_ids(tokens, context_ids)
    batches = (
        add_tokens(b)
        for b in act_store.iter_shards(model_name, layer, "eval", columns=("context_id", "position", "x"))
    )
    shared = {k: getattr(config, k) for k in MinerConfig.__dataclass_fields__ if hasattr(config, k)}
    cfg = MinerConfig(**shared, windows=not config.exact_examples)  # the exact pass fills the windows

    @torch.no_grad()
    def encode(x: torch.Tensor) -> torch.Tensor:
        return tc.encode_active(x.to(device)).cpu()  # sparse: TopK never builds the dense z

    t0 = time.perf_counter()
    stats = mine(encode, tc.d_sae, batches, cfg)
    mine_s = time.perf_counter() - t0
    n_exact = 0
    if config.exact_examples:
        which = torch.ones(len(stats.examples.kind), dtype=torch.bool)
        row_of = {int(c): i for i, c in enumerate(context_ids)}

        def tokens_of(ids: torch.Tensor) -> torch.Tensor:
            return tokens[[row_of[int(i)] for i in ids]]

        n_exact = exact_examples(
            stats.examples, fresh_encoder(atlas_model.load(), tc.encode, layer), tokens_of, which
        )
    exact_s = time.perf_counter() - t0 - mine_s
    context.log.info(f"layer {layer}: {n_exact} contexts re-encoded exactly in {exact_s:.1f}s")
    return _write_layer(context, model_name, layer, tid, stats, mine_s) | {
        "exact_contexts": n_exact,
        "exact_seconds": round(exact_s, 1),
    }


def _mine_stream(
    context, atlas_model: AtlasModel, tids: dict[int, str], config: FeaturesConfig
) -> dict[int, dict]:
    """Mine every layer in `tids` from one float32 forward pass per batch of a stratified held-out sample."""
    tokens, context_ids = corpus_store.sample_contexts("eval", config.mining_contexts, config.seed)
    order = context_ids.argsort()
    tokens, context_ids = tokens[order], context_ids[order]
    device = atlas_model.torch_device
    encoders = {}
    for layer, tid in tids.items():
        tc = tc_store.load_transcoder(tid, device=device)

        @torch.no_grad()
        def encode(x: torch.Tensor, tc=tc) -> torch.Tensor:
            return tc.encode_active(x.to(device)).cpu()  # sparse: TopK never builds the dense z

        encoders[layer] = (encode, tc.d_sae)
    shared = {k: getattr(config, k) for k in MinerConfig.__dataclass_fields__ if hasattr(config, k)}
    chunks = forward_chunks(atlas_model.load(), tokens, context_ids, sorted(tids), config.forward_batch)
    t0 = time.perf_counter()
    n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
    stats = mine_layers(encoders, chunks, MinerConfig(**shared, windows=True), total_tokens=n_tokens)
    seconds = time.perf_counter() - t0
    name = atlas_model.model_name
    return {layer: _write_layer(context, name, layer, tids[layer], stats[layer], seconds) for layer in tids}


def _write_layer(context, model_name: str, layer: int, tid: str, stats, mine_s: float) -> dict:
    labels = _labels(stats, corpus_store.token_strings(model_name))
    counts = feature_store.write_mined(tid, stats, labels)
    cover = feature_store.coverage(tid)
    context.log.info(
        f"layer {layer}: mined {stats.n_tokens} tokens at {stats.n_tokens / mine_s:.0f} tok/s; coverage {cover}"
    )
    return {
        "transcoder_id": tid,
        "n_tokens": stats.n_tokens,
        "mining_tokens_per_s": round(stats.n_tokens / mine_s),
        "live_features": int((stats.n_active > 0).sum()),
        "coverage": cover,
        "rows": counts,
        "preview": pl.DataFrame({"feature": list(range(len(labels))), "label": labels})
        .with_columns(density=pl.Series((stats.density).tolist()))
        .sort("density", descending=True),
    }


@dg.asset(
    partitions_def=settings.layer_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["transcoders", "contexts", "vocab"],  # vocab: the labels are made of its token strings
    group_name="features",
    kinds={"duckdb"},
)
def features(
    context: dg.AssetExecutionContext, config: FeaturesConfig, atlas_model: AtlasModel
) -> dg.MaterializeResult:
    """Per-feature statistics, top and quantile-band examples, token -> feature index, labels (one mining pass)."""
    if config.source not in ("stream", "shards"):
        raise ValueError(f"source must be 'stream' or 'shards', got {config.source!r}.")
    tids, metadata = _gated_layers(context, atlas_model.model_name, feature_store.MINED_TABLES)
    if config.source == "stream":
        results = _mine_stream(context, atlas_model, tids, config) if tids else {}
    else:
        results = {
            layer: _mine_layer(context, atlas_model, layer, tid, config) for layer, tid in tids.items()
        }
    for layer, out in results.items():
        preview = out.pop("preview")
        metadata.update({f"L{layer}_{k}": v for k, v in out.items()})
        metadata[f"L{layer}_densest"] = md_table(preview, max_rows=10)
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    partitions_def=settings.layer_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    # every layer's transcoder, not only its own: the neighbours span all gated layers (so a build of several
    # concurrent layer ranges runs it after all of them, assets.build)
    deps=[dg.AssetDep("transcoders", partition_mapping=dg.AllPartitionMapping())],
    group_name="features",
    kinds={"duckdb"},
)
def feature_tokens(
    context: dg.AssetExecutionContext, config: FeatureTokensConfig, atlas_model: AtlasModel
) -> dg.MaterializeResult:
    """De-embeddings, logit effects (top/bottom tokens) and decoder-cosine neighbours across gated layers."""
    model = atlas_model.load()
    W_E, W_U = model.W_E.detach().float().cpu(), model.W_U.detach().float().cpu()  # [vocab, d], [d, vocab]
    listing = tc_store.list_transcoders(atlas_model.model_name)
    gated = listing.filter(pl.col("gate_passed").fill_null(False))["transcoder_id"].to_list()
    banks = {t: tc_store.load_transcoder(t).W_dec.detach() for t in gated}  # [d_sae, d_model] each
    ids = list(banks)
    current, metadata = _gated_layers(context, atlas_model.model_name, feature_store.WEIGHT_TABLES)
    neighbors = decoder_neighbors(
        list(banks.values()), [ids.index(t) for t in current.values()], config.n_neighbors
    )
    for layer, tid in current.items():
        tc = tc_store.load_transcoder(tid)
        top, bottom = logit_effects(tc.W_dec.detach(), W_U, config.n_tokens)
        effects = {
            "deembed": deembedding(tc.W_enc.detach(), W_E, config.n_tokens),
            "logit_top": top,
            "logit_bottom": bottom,
        }
        counts = feature_store.write_weight_views(tid, effects, neighbors[ids.index(tid)], ids)
        metadata[f"L{layer}_rows"] = counts
        metadata[f"L{layer}_neighbor_banks"] = ids
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    partitions_def=settings.layer_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[features, feature_tokens],
    group_name="features",
    kinds={"json"},
)
def neuronpedia_export(context: dg.AssetExecutionContext, atlas_model: AtlasModel) -> dg.MaterializeResult:
    """The layer's features in Neuronpedia's bulk-import layout under $ATLAS_HOME/exports/neuronpedia/."""
    tids, metadata = _gated_layers(context, atlas_model.model_name, ())
    for layer, tid in tids.items():
        metadata[f"L{layer}_path"] = dg.MetadataValue.path(neuronpedia.export(tid))
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(
    asset=features, description="Every live feature has enough top examples and some band examples."
)
def features_have_examples(atlas_model: AtlasModel) -> dg.AssetCheckResult:
    rows = []
    for tid in tc_store.list_transcoders(atlas_model.model_name)["transcoder_id"].to_list():
        cover = feature_store.coverage(tid)
        if cover["live"]:
            rows.append({"transcoder_id": tid, **cover})
    frame = pl.DataFrame(rows) if rows else pl.DataFrame({"transcoder_id": []})
    bad = [r for r in rows if r["short_top"] or r["no_band"]]
    return dg.AssetCheckResult(passed=not bad, metadata={"coverage": md_table(frame)})


ASSETS = [features, feature_tokens, neuronpedia_export]
CHECKS = [features_have_examples]
