"""The feature database schema: every table and column, documented, versioned and migrated.

This is the public SQL contract (docs/storage.md). Tables are declared once as data; `ddl()` renders them,
`markdown()` renders the documentation (`python -m storage.schema > docs/schema.md`), and `MIGRATIONS`
moves an existing database forward. To change the schema: append a migration, never edit an applied one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    doc: str


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    # the key is a PRIMARY KEY (an ART index); False: unique by construction (its writer replaces whole
    # transcoders' rows) and not indexed, for tables whose index would outweigh the data
    indexed: bool = True

    def create_sql(self) -> str:
        cols = [f"{c.name} {c.type}" for c in self.columns]
        if self.indexed:
            cols.append(f"PRIMARY KEY ({', '.join(self.key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n  " + ",\n  ".join(cols) + "\n)"


def _t(name: str, doc: str, key: tuple[str, ...], *cols: tuple[str, str, str], indexed: bool = True) -> Table:
    return Table(name, doc, tuple(Column(*c) for c in cols), key, indexed)


TID = (
    "transcoder_id",
    "VARCHAR",
    "Transcoder id, '<model>/L<layer>/<architecture>-<d_sae>-<version>', version a hash of the training config "
    "and data (see `transcoders`).",
)

TABLES: tuple[Table, ...] = (
    _t(
        "contexts",
        "Fixed-length token windows cut from the corpus; every example and activation points here.",
        ("context_id",),
        ("context_id", "INTEGER", "Dense id, 0..n-1, in corpus order."),
        ("split", "VARCHAR", "'train' or 'eval' (deterministic hash of the source document)."),
        ("source", "VARCHAR", "Document the window came from (file name or dataset row)."),
        (
            "corpus",
            "VARCHAR",
            "Source the document belongs to (e.g. 'sotu', 'shakespeare', 'moby-dick'); every sample of contexts "
            "is stratified by it.",
        ),
        ("tokens", "INTEGER[]", "Token ids, BOS first, length = context length."),
        ("text", "VARCHAR", "Decoded text of `tokens` (without BOS)."),
    ),
    _t(
        "vocab",
        "Token strings of each model's tokenizer, for rendering and SQL joins.",
        ("model", "token_id"),
        ("model", "VARCHAR", "Model name as given to the pipeline (e.g. 'smollm2-135m', 'gpt2')."),
        ("token_id", "INTEGER", "Token id."),
        ("token_str", "VARCHAR", "Decoded token text (raw, never HTML-escaped; escape when rendering)."),
    ),
    _t(
        "activation_shards",
        "Manifest of harvested activation shards (Parquet files of MLP input x and output y).",
        ("model", "layer", "split", "shard"),
        ("model", "VARCHAR", "Model name."),
        ("layer", "INTEGER", "Layer index."),
        ("split", "VARCHAR", "'train' or 'eval'."),
        ("shard", "INTEGER", "Shard index within (model, layer, split)."),
        ("path", "VARCHAR", "File path or URL of the Parquet shard."),
        ("n_tokens", "BIGINT", "Rows (token positions) in the shard."),
        ("first_context_id", "INTEGER", "Smallest context_id in the shard."),
        ("last_context_id", "INTEGER", "Largest context_id in the shard."),
        ("hook_in", "VARCHAR", "Hook of x, e.g. 'blocks.5.ln2.hook_normalized'."),
        ("hook_out", "VARCHAR", "Hook of y, e.g. 'blocks.5.hook_mlp_out'."),
        ("d_model", "INTEGER", "Width of x and y."),
        ("dtype", "VARCHAR", "Storage dtype of x and y in the file ('float16' or 'float32')."),
        ("created_at", "TIMESTAMP", "When the shard was written."),
    ),
    _t(
        "transcoders",
        "One row per trained transcoder; weights live in `weights_path` (SAELens layout).",
        ("transcoder_id",),
        TID,
        ("model", "VARCHAR", "Model name."),
        ("layer", "INTEGER", "Layer whose MLP it imitates."),
        ("architecture", "VARCHAR", "'relu' (ReLU + L1, the paper), 'topk', 'batchtopk' or 'jumprelu'."),
        ("d_in", "INTEGER", "Input width (d_model)."),
        ("d_sae", "INTEGER", "Number of features."),
        ("train_tokens", "BIGINT", "Tokens seen in training (a continued version's include its parent's)."),
        (
            "weights_path",
            "VARCHAR",
            "Directory with cfg.json + sae_weights.safetensors (+ train_state.safetensors: what continuing needs).",
        ),
        (
            "config",
            "JSON",
            "Full training config and provenance (hooks, corpus, seed, code version; continue_from: the parent).",
        ),
        ("created_at", "TIMESTAMP", "When training finished."),
    ),
    _t(
        "current_transcoders",
        "The transcoder version each layer serves: every downstream asset and the app follow this choice. The "
        "`transcoders` asset points a layer here when it trains it; point it back with storage.transcoders."
        "set_current.",
        ("model", "layer"),
        ("model", "VARCHAR", "Model name."),
        ("layer", "INTEGER", "Layer."),
        TID,
        ("chosen_at", "TIMESTAMP", "When this version became current."),
    ),
    _t(
        "training_curves",
        "Training curve of each transcoder, one row per logged step.",
        ("transcoder_id", "step"),
        TID,
        ("step", "INTEGER", "Optimizer step."),
        ("tokens", "BIGINT", "Tokens seen so far."),
        ("loss", "REAL", "Total loss."),
        ("mse", "REAL", "Mean squared reconstruction error per token (summed over d_out)."),
        ("sparsity_loss", "REAL", "L1 (ReLU) or AuxK (TopK) term."),
        ("l0", "REAL", "Mean active features per token in the batch."),
        ("fvu", "REAL", "Fraction of variance unexplained in the batch."),
        ("dead_frac", "REAL", "Features not fired within the dead window."),
        ("lr", "REAL", "Learning rate at this step."),
    ),
    _t(
        "transcoder_metrics",
        "Held-out evaluation of each transcoder spliced into the model alone.",
        ("transcoder_id",),
        TID,
        ("n_eval_tokens", "BIGINT", "Held-out tokens of the reconstruction metrics (l0 .. dense_frac)."),
        ("n_ce_tokens", "BIGINT", "Held-out predicted tokens of the loss metrics (ce_*, kl)."),
        ("l0", "REAL", "Mean active features per token."),
        ("fvu", "REAL", "sum ||y - y_hat||^2 / sum ||y - mean(y)||^2."),
        (
            "fvu_typical",
            "REAL",
            "FVU over the tokens below the massive-activation threshold (||y - mean y|| under 4x its median), "
            "the tokens the overall FVU hides on layers where a few sink tokens carry most of the variance.",
        ),
        ("massive_frac", "REAL", "Share of eval tokens above the massive-activation threshold."),
        ("mse", "REAL", "Mean over tokens of ||y - y_hat||^2."),
        ("ce_clean", "REAL", "Next-token loss (nats) of the unmodified model."),
        ("ce_spliced", "REAL", "Loss with this layer's MLP output replaced by the transcoder."),
        ("ce_ablated", "REAL", "Loss with the MLP output mean-ablated (train-split mean)."),
        ("ce_zero_ablated", "REAL", "Loss with the MLP output zeroed."),
        ("ce_recovered", "REAL", "(ce_ablated - ce_spliced) / (ce_ablated - ce_clean)."),
        ("kl", "REAL", "Mean per-token KL(clean || spliced) of next-token distributions (nats)."),
        ("dead_frac", "REAL", "Features that never fired on the n_eval_tokens eval tokens."),
        ("dense_frac", "REAL", "Features firing on more than 10% of eval tokens."),
        (
            "gate_passed",
            "BOOLEAN",
            "Whether the transcoder passed the blocking gate (not broken: fvu_typical, and CE recovered on "
            "layers whose MLP matters).",
        ),
        (
            "gate_reason",
            "VARCHAR",
            "Why the gate failed ('' when it passed), naming each metric and its threshold.",
        ),
        ("thresholds", "JSON", "Gate thresholds and quality goals used (see assets/transcoders.py)."),
        (
            "goal_misses",
            "VARCHAR",
            "Quality goals this transcoder misses ('' when none): the non-blocking WARN checks.",
        ),
        ("created_at", "TIMESTAMP", "When evaluated."),
        (
            "n_eval_contexts",
            "INTEGER",
            "Held-out contexts of the loss metrics: the units the bootstrap intervals resample.",
        ),
        (
            "ce_recovered_lo",
            "REAL",
            "Lower bound of the bootstrap 95% interval of ce_recovered over contexts (interp.evals."
            "bootstrap_intervals: 1,000 seeded resamples of the contexts, the ratio of summed losses per resample, "
            "2.5th percentile).",
        ),
        ("ce_recovered_hi", "REAL", "Upper bound (97.5th percentile) of that interval."),
        ("delta_ce_lo", "REAL", "Lower bound of the bootstrap 95% interval of ce_spliced - ce_clean (nats)."),
        ("delta_ce_hi", "REAL", "Upper bound of the bootstrap 95% interval of ce_spliced - ce_clean (nats)."),
    ),
    _t(
        "ablation_baselines",
        "Cache of mean-ablated losses, which do not depend on the transcoder: one row per (model, layer, ablation "
        "mean, evaluation sample), so a second evaluation of another transcoder version on the same sample "
        "reuses them instead of re-running the ablated passes (storage.eval_baselines).",
        ("baseline_key",),
        (
            "baseline_key",
            "VARCHAR",
            "Hash of what determines the losses: model, layer, the ablation mean's values, the sample's context "
            "ids and tokens, precision and batch size (storage.eval_baselines.baseline_key).",
        ),
        ("model", "VARCHAR", "Model name."),
        ("layer", "INTEGER", "Layer whose MLP output was mean-ablated."),
        ("n_contexts", "INTEGER", "Contexts in the sample."),
        ("n_ce_tokens", "BIGINT", "Predicted tokens in the sample."),
        (
            "ce_ablated",
            "DOUBLE",
            "Mean next-token loss per predicted token with the MLP mean-ablated (nats).",
        ),
        (
            "ablated_per_context",
            "DOUBLE[]",
            "Summed mean-ablated loss of each context, in the sample's order (what the bootstrap resamples).",
        ),
        ("created_at", "TIMESTAMP", "When computed."),
    ),
    _t(
        "splice_metrics",
        "Held-out evaluation with several transcoders spliced in at once (all trained layers).",
        ("model", "layers"),
        ("model", "VARCHAR", "Model name."),
        ("layers", "VARCHAR", "Comma-separated spliced layers, e.g. '0,2,8,11'."),
        ("transcoder_ids", "VARCHAR[]", "Transcoders spliced."),
        ("n_eval_tokens", "BIGINT", "Held-out tokens evaluated."),
        ("ce_clean", "REAL", "Loss of the unmodified model."),
        ("ce_spliced", "REAL", "Loss with every listed MLP replaced by its transcoder."),
        ("ce_ablated", "REAL", "Loss with every listed MLP mean-ablated."),
        ("ce_recovered", "REAL", "(ce_ablated - ce_spliced) / (ce_ablated - ce_clean)."),
        ("kl", "REAL", "Mean KL(clean || spliced)."),
        ("created_at", "TIMESTAMP", "When evaluated."),
    ),
    _t(
        "features",
        "One row per transcoder feature: statistics over held-out tokens and a short automatic label.",
        ("transcoder_id", "feature"),
        TID,
        ("feature", "INTEGER", "Feature index, 0..d_sae-1."),
        ("density", "REAL", "Fraction of eval tokens where the feature is active (> 0)."),
        ("mean_act", "REAL", "Mean activation over tokens where it is active."),
        ("max_act", "REAL", "Largest activation seen."),
        ("n_active", "BIGINT", "Tokens where it is active."),
        ("n_contexts", "BIGINT", "Held-out contexts where it fires at least once."),
        ("n_tokens", "BIGINT", "Held-out tokens mined (density = n_active / n_tokens)."),
        ("min_act", "REAL", "Smallest positive activation seen (0 when never active)."),
        (
            "quantiles",
            "REAL[]",
            "Activation quantiles over active tokens at `quantile_levels`, read off a one-pass log histogram "
            "(8 bins per octave, geometric interpolation in the bin): relative error < 2^(1/8) - 1 = 9%.",
        ),
        ("quantile_levels", "REAL[]", "Levels of `quantiles` (e.g. 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)."),
        (
            "hist_edges",
            "REAL[]",
            "Histogram bin edges of active activations (n_bins + 1): log-spaced, outer edges = min_act, max_act.",
        ),
        ("hist_counts", "BIGINT[]", "Histogram counts (n_bins), exact."),
        ("label", "VARCHAR", "Automatic label: the tokens under its top examples, weighted by activation."),
    ),
    _t(
        "feature_examples",
        "Activating examples per feature: the top-k and samples from activation quantile bands.",
        ("transcoder_id", "feature", "kind", "rank"),
        TID,
        ("feature", "INTEGER", "Feature index."),
        ("kind", "VARCHAR", "'top', or 'q<i>' for the i-th activation quantile band (q0 weakest)."),
        ("rank", "INTEGER", "0 = strongest within the kind."),
        ("context_id", "INTEGER", "Context (see `contexts`)."),
        ("position", "INTEGER", "Token position of the example within the context."),
        ("token_id", "INTEGER", "Token at (context_id, position): the one it fires on (join `vocab`)."),
        ("activation", "REAL", "Feature activation at (context_id, position)."),
        ("window_start", "INTEGER", "Position of token_acts[0] within the context."),
        ("token_acts", "REAL[]", "Feature activation on every token of the window."),
    ),
    _t(
        "feature_tokens",
        "Input-invariant token effects: de-embedding (f_enc . W_E) and logit effect (f_dec . W_U).",
        ("transcoder_id", "feature", "kind", "rank"),
        TID,
        ("feature", "INTEGER", "Feature index."),
        ("kind", "VARCHAR", "'deembed', 'logit_top' or 'logit_bottom'."),
        ("rank", "INTEGER", "0 = largest magnitude within the kind."),
        ("token_id", "INTEGER", "Token id (join `vocab`)."),
        ("value", "REAL", "Dot product."),
    ),
    _t(
        "token_features",
        "Token -> features index: which features fire most on each token id in held-out text.",
        ("transcoder_id", "token_id", "rank"),
        TID,
        ("token_id", "INTEGER", "Token id at the active position."),
        ("rank", "INTEGER", "0 = largest mean activation on this token."),
        ("feature", "INTEGER", "Feature index."),
        ("mean_act", "REAL", "Mean activation of the feature on occurrences of the token."),
        ("count", "BIGINT", "Occurrences of the token where the feature is active."),
    ),
    _t(
        "feature_neighbors",
        "Nearest features by decoder-direction cosine, within and across layers.",
        ("transcoder_id", "feature", "rank"),
        TID,
        ("feature", "INTEGER", "Feature index."),
        ("rank", "INTEGER", "0 = most similar."),
        ("nb_transcoder_id", "VARCHAR", "Neighbour's transcoder."),
        ("nb_feature", "INTEGER", "Neighbour's feature index."),
        ("cosine", "REAL", "Cosine of the two decoder vectors."),
    ),
    _t(
        "feature_edges",
        "Input-invariant feature-to-feature weights: for each downstream feature and each via, the top-k "
        "(FeatureEdgesConfig.k, default 8) upstream features by |weight|, among the transcoders at most max_gap "
        "layers below (default 2; 0 = all, which grows with the cube of the depth). Not indexed: on the full-depth "
        "default atlas (20M rows) a primary-key index took 1.9 GB where the rows take 131 MB; filter on "
        "dst_transcoder_id / src_transcoder_id, which the rows' zone maps serve.",
        ("src_transcoder_id", "src_feature", "dst_transcoder_id", "dst_feature", "via"),
        ("src_transcoder_id", "VARCHAR", "Upstream transcoder (layer l)."),
        ("src_feature", "INTEGER", "Upstream feature."),
        ("dst_transcoder_id", "VARCHAR", "Downstream transcoder (layer l' > l)."),
        ("dst_feature", "INTEGER", "Downstream feature."),
        ("via", "VARCHAR", "'resid' (f_dec . f_enc) or 'attn.<layer>.<head>' (f_enc^T W_OV f_dec)."),
        ("weight", "REAL", "Connection weight (norm scale treated as a constant)."),
        ("rank", "INTEGER", "Rank by |weight| among the upstream features of (dst, via)."),
        indexed=False,
    ),
    _t(
        "graphs",
        "Input-dependent attribution graphs for prompts (paper §3.2).",
        ("graph_id",),
        ("graph_id", "VARCHAR", "Stable id derived from model, prompt and target."),
        ("model", "VARCHAR", "Model name."),
        ("prompt", "VARCHAR", "Prompt text."),
        (
            "tokens",
            "INTEGER[]",
            "Token ids of the prompt as run (BOS first); node positions index this list.",
        ),
        (
            "target",
            "VARCHAR",
            "Target: 'feature:<transcoder_id>:<feature>@<pos>' or 'logit:\"<tok>\"-\"<tok>\"@<pos>' (tokens as JSON-quoted "
            'text, e.g. logit:" Mary"-" John"@14; see interp.attribution.targets).',
        ),
        ("target_value", "REAL", "Value of the target on the prompt."),
        (
            "method",
            "VARCHAR",
            "How the graph was built: 'exact' (every direct effect among the active features, circuit-tracer's "
            "method: interp.attribution.exact) or 'greedy' (the seed paper's path search: interp.attribution.search).",
        ),
        (
            "target_prob",
            "REAL",
            "Logit targets: the model's probability of the target token (the first, for a difference) at the "
            "target position; NULL for feature targets.",
        ),
        (
            "config",
            "JSON",
            "Method settings (greedy: top-N paths and depth; exact: max_feature_nodes and active features), node/edge "
            "thresholds, transcoders.",
        ),
        ("created_at", "TIMESTAMP", "When computed."),
        (
            "replacement_score",
            "REAL",
            "circuit-tracer's replacement score: share of the tokens' influence on the target through features "
            "rather than error nodes (interp.attribution.prune; graph before pruning).",
        ),
        (
            "completeness_score",
            "REAL",
            "circuit-tracer's completeness score: influence-weighted share of node inputs that are not errors.",
        ),
        (
            "error_share",
            "REAL",
            "Share of the target's absolute attribution that arrives from error nodes (transcoder errors, MLPs "
            "without a transcoder).",
        ),
        ("n_nodes", "INTEGER", "Nodes stored (after pruning)."),
        ("n_edges", "INTEGER", "Edges stored (after pruning)."),
    ),
    _t(
        "graph_nodes",
        "Nodes of attribution graphs.",
        ("graph_id", "node_id"),
        ("graph_id", "VARCHAR", "Graph."),
        ("node_id", "VARCHAR", "Node id within the graph."),
        (
            "kind",
            "VARCHAR",
            "'target', 'feature', 'attn', 'embed', 'error', 'bias', 'skip' or 'pruned' (see interp.attribution).",
        ),
        ("layer", "INTEGER", "Layer (NULL for embeddings/target)."),
        ("position", "INTEGER", "Token position."),
        ("feature", "INTEGER", "Feature index (feature nodes), head index (attn nodes), token id (embed)."),
        ("transcoder_id", "VARCHAR", "Transcoder of a feature node."),
        ("activation", "REAL", "Feature activation or node value on the prompt."),
        ("influence", "REAL", "Total attribution flowing from this node to the target."),
        ("label", "VARCHAR", "Human-readable label."),
        (
            "cumulative_influence",
            "REAL",
            "Share of the graph's normalized influence held by the nodes ranked before this one and itself "
            "(circuit-tracer's cumulative score; a node threshold τ keeps the nodes below τ and the first that "
            "reaches it, interp.attribution.prune.kept_nodes; 0 for the target, NULL for bias/pruned).",
        ),
        ("feeds", "VARCHAR", "Attention and pruned-remainder nodes: the node whose value they are part of."),
    ),
    _t(
        "graph_edges",
        "Edges of attribution graphs: src contributes `weight` to dst's value.",
        ("graph_id", "src_node", "dst_node"),
        ("graph_id", "VARCHAR", "Graph."),
        ("src_node", "VARCHAR", "Upstream node."),
        ("dst_node", "VARCHAR", "Downstream node."),
        ("weight", "REAL", "Attribution of src to dst."),
    ),
    _t(
        "graph_interventions",
        "Faithfulness per node: each of a graph's top feature nodes by |influence| zeroed in the replacement model "
        "and in the real model, every MLP live (interp.faithfulness).",
        ("graph_id", "setting", "node_id"),
        ("graph_id", "VARCHAR", "Graph."),
        (
            "setting",
            "VARCHAR",
            "What is held at its clean value (interp.faithfulness.SETTINGS): 'replacement_model' (attention "
            "patterns and norm scales; transcoders run in place of their MLPs, errors held), "
            "'attention_norms_frozen' (patterns and norm scales; real MLPs live), 'attention_frozen' (patterns) "
            "or 'nothing_frozen'.",
        ),
        ("node_id", "VARCHAR", "Feature node zeroed (see `graph_nodes`)."),
        ("layer", "INTEGER", "Its layer."),
        ("position", "INTEGER", "Its token position."),
        ("feature", "INTEGER", "Its feature index."),
        ("predicted", "REAL", "The graph's change of the target: minus the node's influence."),
        ("actual", "REAL", "Measured change of the target (ablated minus clean) in the setting's model."),
    ),
    _t(
        "graph_faithfulness",
        "Faithfulness per graph and setting: predicted vs actual changes of `graph_interventions`.",
        ("graph_id", "setting"),
        ("graph_id", "VARCHAR", "Graph."),
        ("setting", "VARCHAR", "What is held at its clean value (see `graph_interventions`)."),
        (
            "n_nodes",
            "INTEGER",
            "Feature nodes intervened on (top 20 by |influence|, fewer if the graph has fewer).",
        ),
        ("pearson", "REAL", "Pearson correlation of predicted and actual changes."),
        ("spearman", "REAL", "Spearman rank correlation of predicted and actual changes."),
        (
            "sign_agreement",
            "REAL",
            "Share of nodes whose ablation moves the target in the predicted direction (goal >= 0.9 with attention "
            "frozen).",
        ),
    ),
)

TABLE_BY_NAME = {t.name: t for t in TABLES}


# version -> statements. Version 1 creates everything above; later versions append ALTER/CREATE statements.
def _add_columns(table: str, *names: str) -> list[str]:
    return [
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {c.name} {c.type}"
        for c in TABLE_BY_NAME[table].columns
        if c.name in names
    ]


MIGRATIONS: dict[int, list[str]] = {
    1: [t.create_sql() for t in TABLES],
    # sources for stratified samples, honest evaluation columns, transcoder versions
    2: [
        *_add_columns("contexts", "corpus"),
        *_add_columns("transcoder_metrics", "fvu_typical", "massive_frac", "goal_misses"),
        TABLE_BY_NAME["current_transcoders"].create_sql(),
    ],
    # graph scores and counts; nodes' cumulative influence (pruning slider) and what attention nodes feed
    3: [
        *_add_columns(
            "graphs", "replacement_score", "completeness_score", "error_share", "n_nodes", "n_edges"
        ),
        *_add_columns("graph_nodes", "cumulative_influence", "feeds"),
    ],
    # faithfulness of each graph on the real model (interp.faithfulness)
    4: [TABLE_BY_NAME["graph_interventions"].create_sql(), TABLE_BY_NAME["graph_faithfulness"].create_sql()],
    # feature_edges loses its PRIMARY KEY: on the full-depth default atlas (20M rows) the index took 1.9 GB of the
    # table's 2.0 GB. A table copy drops the constraint (DuckDB cannot drop a primary key in place).
    5: [
        "CREATE TABLE feature_edges_unindexed AS SELECT * FROM feature_edges",
        "DROP TABLE feature_edges",
        "ALTER TABLE feature_edges_unindexed RENAME TO feature_edges",
    ],
    # the target token's probability: the circuit-tracer viewer reads it in a logit node's label
    6: _add_columns("graphs", "target_prob"),
    # bootstrap intervals of per-layer CE recovered, and the transcoder-independent mean-ablation baselines
    7: [
        *_add_columns(
            "transcoder_metrics",
            "n_eval_contexts",
            "ce_recovered_lo",
            "ce_recovered_hi",
            "delta_ce_lo",
            "delta_ce_hi",
        ),
        TABLE_BY_NAME["ablation_baselines"].create_sql(),
    ],
    # exact attribution next to the greedy search: which method built each graph (graphs before it: greedy)
    8: [*_add_columns("graphs", "method"), "UPDATE graphs SET method = 'greedy' WHERE method IS NULL"],
}
SCHEMA_VERSION = max(MIGRATIONS)


def markdown() -> str:
    """Documentation of every table and column, generated from TABLES."""
    out = [
        "# Feature database tables",
        "",
        f"Schema version {SCHEMA_VERSION}. Generated by `python -m storage.schema`.",
        "",
    ]
    for t in TABLES:
        out += [
            f"## `{t.name}`",
            "",
            t.doc,
            "",
            f"Key: ({', '.join(t.key)})" + ("" if t.indexed else ", unique by construction, not indexed"),
            "",
            "| column | type | meaning |",
            "|---|---|---|",
        ]
        out += [f"| `{c.name}` | {c.type} | {c.doc} |" for c in t.columns]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
