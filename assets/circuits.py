"""Assets `feature_edges` and `attribution_graphs`: the paper's circuit analysis over the latest transcoder of
every atlas layer (interp.edges, interp.attribution -> storage.circuits).

`feature_edges` needs only the weights: for every downstream feature, the top-k upstream features through the
residual stream and through each attention head's OV circuit. `attribution_graphs` builds the exact graph (or runs the
greedy path search) for each configured prompt and target and also exports circuit-tracer / Neuronpedia JSON under
$ATLAS_HOME/exports. Both use every trained layer; a layer whose transcoder failed its quality gate is used too
(circuits of a poor transcoder are still exact about that transcoder) and named in the metadata.
"""

import time

import dagster as dg
import polars as pl
import torch

from assets import settings
from assets.metadata import md_table
from assets.resources import AtlasModel
from interp.attribution import (
    EDGE_THRESHOLD,
    N_PATHS,
    N_STEPS,
    NODE_THRESHOLD,
    PromptCache,
    attribute,
    check_target,
    direct_effects,
    parse_target,
    target_string,
)
from interp.attribution.exact import MAX_FEATURE_NODES, attribute_exact
from interp.edges import feature_edges as compute_feature_edges
from interp.edges import ov_weights
from interp.faithfulness import TOP_NODES, agreement, intervene
from interp.model import parallel_blocks
from storage import circuits, graph_export


class FeatureEdgesConfig(dg.Config):
    k: int = 8  # upstream features kept per downstream feature and via
    heads: bool = True  # also through each attention head's OV circuit (else the residual stream only)
    block: int = 2048  # features per block: working memory ~ 2 x block² floats, independent of d_sae
    # upstream transcoders at most this many layers below the downstream one (0 = every layer below). Every
    # layer below costs O(layers³) head routes: at 30 layers that is ~100 TFLOP and ~150M rows
    max_gap: int = 2


METHODS = ("exact", "greedy")


class GraphSpec(dg.Config):
    prompt: str  # BOS is prepended, as in the corpus contexts
    target: str  # 'logit:"<tok>"[-"<tok>"][@pos]' or 'feature:<transcoder id or L<layer>>:<feature>[@pos]'


class AttributionGraphsConfig(dg.Config):
    # Behaviours SmolLM2-135M does well (p of the first token: 0.84, 0.84, 0.62).
    graphs: list[GraphSpec] = [  # dicts: Dagster validates defaults as plain config
        {
            "prompt": "When Mary and John went to the store, John gave a drink to",
            "target": 'logit:" Mary"-" John"',
        },
        {"prompt": "In 1999, the company grew. In 2000, it grew again. In 200", "target": 'logit:"1"-"0"'},
        {"prompt": "Mr. Smith went to Washington. Later that day Mr.", "target": 'logit:" Smith"'},
    ]
    # 'exact': every direct effect among the active features (circuit-tracer's method, interp.attribution.exact);
    # 'greedy': the seed paper's path search (interp.attribution.search). docs/circuits.md compares them
    method: str = "exact"
    max_feature_nodes: int = (
        MAX_FEATURE_NODES  # exact: features given a row, most influential first (0 = all)
    )
    n_paths: int = N_PATHS  # greedy: paths kept per step of the search (the paper's number of branches)
    n_steps: int = N_STEPS  # greedy: search depth in steps (the paper's number of iterations)
    # influence-based pruning of the searched graph (circuit-tracer's defaults, interp.attribution.prune): keep the
    # nodes holding this share of the normalized influence, then the edges holding this share of edge influence
    node_threshold: float = NODE_THRESHOLD
    edge_threshold: float = EDGE_THRESHOLD
    export_json: bool = True  # also write circuit-tracer JSON to $ATLAS_HOME/exports/graph-<id>.json
    # faithfulness on the real model: zero this many top feature nodes, MLPs live (interp.faithfulness)
    faithfulness_nodes: int = TOP_NODES


@dg.asset(deps=["transcoders"], group_name="circuits", kinds={"pytorch", "duckdb"})
def feature_edges(
    context: dg.AssetExecutionContext, config: FeatureEdgesConfig, atlas_model: AtlasModel
) -> dg.MaterializeResult:
    """Input-invariant feature-to-feature weights (top-k upstream per downstream feature, per resid/head)."""
    device, model_name = atlas_model.torch_device, atlas_model.model_name
    ids, tcs, failed = circuits.load_atlas_transcoders(
        model_name, settings.atlas_layers(context.instance), device
    )
    model = atlas_model.load()
    W_V, W_O = (w.detach().to(device) for w in ov_weights(model))
    t0 = time.perf_counter()
    tops = compute_feature_edges(
        tcs,
        W_V,
        W_O,
        k=config.k,
        heads=config.heads,
        block=config.block,
        parallel=parallel_blocks(model),
        max_gap=config.max_gap or None,
    )
    frames = [circuits.edges_frame(top, ids) for top in tops]
    seconds = time.perf_counter() - t0
    n = circuits.write_feature_edges(model_name, frames, ids.values())
    context.log.info(f"{n} feature edges over layers {sorted(ids)} in {seconds:.1f} s")
    strongest = pl.concat(frames).sort(pl.col("weight").abs(), descending=True) if frames else pl.DataFrame()
    return dg.MaterializeResult(
        metadata={
            "rows": n,
            "vias": len(frames),
            "seconds": round(seconds, 2),
            "transcoder_ids": ", ".join(ids.values()),
            "gate_failed": ", ".join(failed) or "none",
            "strongest": md_table(strongest, max_rows=15),
        }
    )


@dg.asset(deps=["transcoders", dg.AssetDep("features")], group_name="circuits", kinds={"pytorch", "duckdb"})
def attribution_graphs(
    context: dg.AssetExecutionContext, config: AttributionGraphsConfig, atlas_model: AtlasModel
) -> dg.MaterializeResult:
    """Attribution graphs of the configured prompts/targets (exact or greedy), influence-based pruning, scores."""
    model, model_name = atlas_model.load(), atlas_model.model_name
    device = atlas_model.torch_device
    ids, tcs, failed = circuits.load_atlas_transcoders(
        model_name, settings.atlas_layers(context.instance), device
    )
    if config.method not in METHODS:
        raise dg.Failure(f"attribution_graphs: method {config.method!r} is not one of {', '.join(METHODS)}.")
    tok = model.tokenizer
    rows, kept = [], []
    for spec in config.graphs:
        spec = spec if isinstance(spec, GraphSpec) else GraphSpec(**spec)  # defaults arrive as dicts
        prefix = [tok.bos_token_id] if tok.bos_token_id is not None else []
        tokens = torch.tensor(prefix + tok(spec.prompt, add_special_tokens=False)["input_ids"], device=device)
        target = parse_target(spec.target, tok)
        check_target(target, len(tokens), tcs)
        canonical = target_string(target, len(tokens), ids.get(getattr(target, "layer", None)), tok)
        token_strs = [tok.decode([t]) for t in tokens.tolist()]
        t0 = time.perf_counter()
        pc = PromptCache(model, tokens, tcs)
        if config.method == "exact":
            graph = attribute_exact(
                model, tokens, tcs, target, config.max_feature_nodes or None, token_strs=token_strs, cache=pc,
                tokenizer=tok, node_threshold=config.node_threshold, edge_threshold=config.edge_threshold,
            )  # fmt: skip
        else:
            graph = attribute(
                model, tokens, tcs, target, config.n_paths, config.n_steps, token_strs=token_strs, cache=pc,
                tokenizer=tok, node_threshold=config.node_threshold, edge_threshold=config.edge_threshold,
            )  # fmt: skip
        seconds = time.perf_counter() - t0
        stage, position, reader, _ = pc.target_reader(target)
        budget = direct_effects(pc, stage, position, reader).budget()
        interventions = intervene(model, graph, tcs, config.faithfulness_nodes)
        faithful = agreement(interventions, "attention_frozen")
        gid = circuits.write_graph(graph, model_name, spec.prompt, canonical, ids, interventions)
        kept.append(gid)
        if config.export_json:
            graph_export.export_graph(gid)
        top = graph.top_paths(1)
        rows.append(
            {
                "graph_id": gid,
                "method": config.method,
                "prompt": spec.prompt,
                "target": canonical,
                "value": graph.target_value,
                "nodes": len(graph.nodes),
                "edges": len(graph.edges),
                **{name: round(v, 3) for name, v in graph.scores.items()},
                "seconds": round(seconds, 2),
                # real model, MLPs live, attention patterns frozen (graph_faithfulness has both settings)
                "sign_agreement": round(faithful["sign_agreement"], 3),
                "spearman": round(faithful["spearman"], 3),
                # how much of the value the atlas's features carry directly, and how much the MLPs it lacks
                "from_features": round(budget["features"], 3),
                "from_mlps_without_transcoder": round(budget["mlps_without_transcoder"], 3),
                "top_path": " ← ".join(graph.nodes[n].label for n in top[0][1]) if top else "",
            }
        )
        context.log.info(f"graph {gid}: {spec.prompt!r} {canonical} in {seconds:.1f} s")
    circuits.delete_graphs_except(model_name, kept)
    return dg.MaterializeResult(
        metadata={
            "graphs": md_table(pl.DataFrame(rows)),
            "graph_ids": ", ".join(kept),
            "gate_failed": ", ".join(failed) or "none",
        }
    )


@dg.asset_check(asset=attribution_graphs, description="Every node's incoming edge weights sum to its value.")
def graphs_balance(atlas_model: AtlasModel) -> dg.AssetCheckResult:
    worst = circuits.bookkeeping_residuals(atlas_model.model_name)
    bad = worst.filter(pl.col("rel_error") > 1e-3)
    return dg.AssetCheckResult(
        passed=bad.height == 0,
        metadata={"nodes_checked": worst.height, "worst": md_table(worst.head(10))},
    )


ASSETS = [feature_edges, attribution_graphs]
CHECKS = [graphs_balance]
