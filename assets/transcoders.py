"""Assets `transcoders` (one per layer) and `splice_metrics` (all trained layers spliced at once), with a gate check
(downstream steps skip a layer that fails it) and a quality-goal check (warnings).

`transcoders` is partitioned by layer and runs a range of partitions as ONE run (single-run backfill): with
`source: stream` (the default) the model runs once per batch of a seeded, source-stratified sample of training
contexts and every layer of the run trains on its own (x, y) from that pass (interp.train.train_layers), so no
activations are stored; `source: shards` re-trains from the `activations` asset's Parquet shards instead. A killed
run resumes from its checkpoint under $ATLAS_HOME/checkpoints without repeating finished forward passes. Layer
ranges run in parallel as separate runs (`python -m assets.build --runs 3`: 0..9, 10..19, 20..29), each with its
own pass.

Each transcoder is then evaluated spliced alone on a stratified sample of held-out contexts (interp.evals: CE
recovered with a bootstrap 95% interval over the contexts; the mean-ablated losses, which do not depend on the
transcoder, are read from and written to the `ablation_baselines` cache, storage.eval_baselines), gated
(interp.quality: blocking "not broken" gate, quality goals as warnings) and written as a new version (its id hashes
the training recipe and data) that becomes the layer's current one (storage.transcoders). The database is opened
only for short reads and the final write.

`continue_from: current` trains each layer's current version further instead (interp.train, step 7): from its
weights and saved optimiser state, on `train_tokens` more tokens of training contexts it has not seen, into a new
version whose recipe names its parent (docs/training.md, "Keep training").
"""

import base64
import dataclasses
import io
import math
import time

import dagster as dg
import polars as pl
import pydantic
import torch

from assets import settings
from assets.config import fields_of
from assets.metadata import md_table
from assets.resources import AtlasModel
from interp.activations import harvest
from interp.evals import evaluate, evaluate_each
from interp.model import autocast, check_layers, mlp_hooks
from interp.quality import Thresholds, gate, goal_misses
from interp.train import Parent, TrainConfig, TrainResult, check_parent_shape, recipe, train, train_layers
from interp.transcoder import EXPANSION_FACTOR, TranscoderConfig
from storage import activations as act_store
from storage import corpus as corpus_store
from storage import eval_baselines, layout
from storage import transcoders as tc_store


class EvalConfig(dg.Config):
    """Held-out evaluation settings. Each field's description (the Dagster UI shows it) is its docstring, as in
    the interp dataclasses the other fields come from."""

    model_config = pydantic.ConfigDict(use_attribute_docstrings=True)

    eval_contexts: int = 256
    """Held-out contexts (a seeded sample stratified by source) for the loss metrics, 1 + 2 x layers forward passes
    per batch (1 + layers when the mean-ablation baselines are cached); the reconstruction metrics (l0, fvu, dead)
    are on the same tokens. Per layer, CE recovered comes with a bootstrap 95% interval over these contexts."""
    eval_seed: int = 1
    """Seed of the held-out sample (and of the bootstrap resamples)."""
    eval_batch_size: int = 8
    """Contexts per evaluation forward pass."""

    def validate(self) -> None:
        if self.eval_contexts < 1:
            raise ValueError(f"eval_contexts must be at least 1, got {self.eval_contexts}.")


class _TranscodersAssetConfig(EvalConfig):
    """The `transcoders` asset's own settings; TranscoderTrainConfig adds interp's."""

    source: str = "stream"
    """'stream': train from forward passes of the model; 'shards': from the `activations` asset's shards."""
    expansion_factor: int = EXPANSION_FACTOR
    """The width: d_sae = expansion_factor x d_model."""
    forward_batch: int = 16
    """stream: contexts per forward pass."""
    continue_from: str = ""
    """'' trains new transcoders. 'current' trains each layer's current version further: from its weights and
    optimiser state, on train_tokens more tokens of training contexts it has not seen, into a new version that
    becomes current (the parent is kept). A transcoder id does the same from that version (a one-layer run)."""

    def _values(self, cls: type) -> dict:
        """This config's values of the fields of interp dataclass `cls` that it has."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(cls)
            if f.name in type(self).model_fields
        }

    def transcoder_config(self, model_name: str, layer: int, d_model: int) -> TranscoderConfig:
        hook_in, hook_out = mlp_hooks(layer)
        return TranscoderConfig.expanded(
            d_model,
            d_model,
            self.expansion_factor,
            hook_name=hook_in,
            hook_name_out=hook_out,
            model_name=model_name,
            layer=layer,
            **self._values(TranscoderConfig),
        )

    def train_config(self, device: str) -> TrainConfig:
        return TrainConfig(device=device, **self._values(TrainConfig))

    def thresholds(self) -> Thresholds:
        return Thresholds(**self._values(Thresholds))

    def validate(self) -> None:
        """Clear errors before any work starts (the interp configs check their fields when built)."""
        super().validate()
        if self.source not in ("stream", "shards"):
            raise ValueError(f"source must be 'stream' or 'shards', got {self.source!r}.")
        if self.continue_from and self.source != "stream":
            raise ValueError(
                "continue_from needs source 'stream': a continued run trains on contexts its parent has not seen, "
                "and the activation shards are one fixed harvest."
            )
        self.train_config("cpu")  # TrainConfig checks its fields (a budget of at least one batch) when built


TranscoderTrainConfig = pydantic.create_model(
    "TranscoderTrainConfig",
    __base__=_TranscodersAssetConfig,
    __module__=__name__,
    __doc__="Training, evaluation and gate settings: the asset's own, then the fields of interp's TranscoderConfig "
    "(the shape a user picks), TrainConfig (all but the device) and Thresholds, with their defaults and docs.",
    **fields_of(TranscoderConfig, only=("architecture", "k", "skip")),
    **fields_of(TrainConfig, exclude=("device",)),
    **fields_of(Thresholds),
)


def _curve_plot(curve: pl.DataFrame) -> dg.MetadataValue:
    """FVU, L0 and dead fraction against tokens, as an inline PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 2.6))
    for ax, col in zip(axes, ("fvu", "l0", "dead_frac")):
        ax.plot(curve["tokens"], curve[col])
        ax.set_title(col)
        ax.set_xlabel("tokens")
    axes[0].set_yscale("log")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=70)
    plt.close(fig)
    return dg.MetadataValue.md(
        f"![training curve](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"
    )


def _recipe(cfg: TrainConfig, tc_cfg: TranscoderConfig, data: dict) -> dict:
    """Everything that determines a transcoder's weights (configs and data): hashed into its version id."""
    return {**recipe(cfg, tc_cfg), "data": data}


def _stream_data(model, config: TranscoderTrainConfig, layers: list[int], seen: frozenset[int] = frozenset()):
    """(stream(start), data description, context ids) over a stratified sample of training contexts sized to the
    budget, none of them in `seen` (the contexts a continued run's parents were trained on)."""
    n_ctx = math.ceil(config.train_tokens / (corpus_store.context_length() - 1))
    ids = corpus_store.sample_context_ids("train", n_ctx, config.seed, exclude=seen)
    tokens = corpus_store.contexts_by_id(ids)  # [n_ctx, ctx_len]
    context_ids = torch.tensor(ids)
    fb = config.forward_batch

    def stream(start: int):
        for b in harvest(model, tokens[start * fb :], context_ids[start * fb :], layers, fb, config.bf16):
            yield b.acts

    data = {
        "split": "train",
        "sample_seed": config.seed,
        "contexts": n_ctx,
        "ids": tc_store.version_hash({"ids": ids}),
    }
    if seen:
        data["excluded_contexts"] = len(seen)
    return stream, data, ids


def _shard_data(model_name: str, layer: int):
    """(one-layer stream, data description) over the layer's train activation shards."""
    paths = act_store.shard_paths(model_name, layer, "train")

    def chunks():
        for path in paths:
            yield act_store.read_shard(path)

    return chunks, {"split": "train", "shards": paths}


def _parents(
    config: TranscoderTrainConfig, model_name: str, tc_cfgs: dict[int, TranscoderConfig]
) -> dict[int, tuple[str, Parent]]:
    """{layer: (parent id, (transcoder, training state))} of a continued run ({} for new transcoders); clear errors
    for a layer with nothing to continue, or a parent of another shape than the config asks for."""
    if not config.continue_from:
        return {}
    layers = sorted(tc_cfgs)
    if config.continue_from == "current":
        listed = tc_store.list_transcoders(model_name)
        ids = dict(zip(listed["layer"].to_list(), listed["transcoder_id"].to_list()))
        missing = [layer for layer in layers if layer not in ids]
        if missing:
            raise LookupError(
                f"continue_from 'current': layer(s) {missing} of {model_name} have no transcoder to continue; "
                "train them first (continue_from: '')."
            )
    else:
        row = tc_store.transcoder_row(config.continue_from)
        if row["model"] != model_name or [row["layer"]] != layers:
            raise ValueError(
                f"continue_from {config.continue_from!r} is {row['model']} layer {row['layer']}; this run trains "
                f"{model_name} layer(s) {layers}. A transcoder id continues its own layer, in a one-layer run."
            )
        ids = {row["layer"]: config.continue_from}
    parents = {}
    for layer in layers:
        tc = tc_store.load_transcoder(ids[layer])
        try:
            check_parent_shape(tc_cfgs[layer], tc.cfg)
        except ValueError as e:
            raise ValueError(f"Layer {layer}, parent {ids[layer]}: {e}") from None
        parents[layer] = ids[layer], (tc, tc_store.load_train_state(ids[layer]))
    return parents


def _seen(context, parents: dict[int, tuple[str, Parent]]) -> frozenset[int]:
    """The training contexts any parent was trained on (a continued run draws others)."""
    seen: set[int] = set()
    for pid, (_, state) in parents.values():
        if state.context_ids is None:
            context.log.warning(
                f"{pid} does not record its training contexts; the new sample may repeat some"
            )
        else:
            seen |= set(state.context_ids.tolist())
    return frozenset(seen)


def _train(
    context, config: TranscoderTrainConfig, atlas_model: AtlasModel, layers: list[int]
) -> tuple[dict[int, TrainResult], dict]:
    """Train every layer of the run; returns results and each layer's recipe."""
    model, model_name = atlas_model.load(), atlas_model.model_name
    cfg = config.train_config(atlas_model.torch_device)
    tc_cfgs = {layer: config.transcoder_config(model_name, layer, model.cfg.d_model) for layer in layers}
    parents = _parents(config, model_name, tc_cfgs)  # before any forward pass

    def log_row(layer: int, r: dict) -> None:
        context.log.info(
            f"L{layer} step {r['step']}/{cfg.steps}: fvu {r['fvu']:.4f} l0 {r['l0']:.1f} dead {r['dead_frac']:.3f}"
        )

    if config.source == "shards":
        results, recipes = {}, {}
        for layer in layers:
            chunks, data = _shard_data(model_name, layer)
            recipes[layer] = _recipe(cfg, tc_cfgs[layer], data)
            ckpt = _checkpoint(model_name, [layer], recipes)
            results[layer] = train(
                chunks, cfg, tc_cfgs[layer], ckpt, on_log=lambda r, la=layer: log_row(la, r)
            )
            _drop_checkpoint(ckpt)
        return results, recipes
    seen = _seen(context, parents)
    stream, data, ids = _stream_data(model, config, layers, seen)
    recipes = {layer: _recipe(cfg, tc_cfgs[layer], data) for layer in layers}
    for layer, (pid, (_, state)) in parents.items():
        total = state.tokens + cfg.steps * cfg.batch_size  # the weights' whole budget, the parent's included
        recipes[layer] |= {"continue_from": pid, "total_tokens": total}
    ckpt = _checkpoint(model_name, layers, recipes)
    results = train_layers(
        stream,
        {layer: cfg for layer in layers},
        tc_cfgs,
        ckpt,
        config.checkpoint_every,
        on_log=lambda layer, r: log_row(layer, r) if r["step"] % (10 * cfg.log_every) == 0 else None,
        parents={layer: parent for layer, (_, parent) in parents.items()},
    )
    _drop_checkpoint(ckpt)
    for res in results.values():  # what the weights have seen: the parents' contexts and this run's
        res.state.context_ids = torch.tensor(sorted(seen | set(ids)), dtype=torch.long)
    return results, recipes


def _checkpoint(model_name: str, layers: list[int], recipes: dict) -> str | None:
    """A local checkpoint file for this run (keyed by its layers and recipes), or None for a remote ATLAS_HOME."""
    if layout.is_remote(layout.atlas_home()):
        return None
    key = tc_store.version_hash({str(layer): recipes[layer] for layer in layers})
    return layout.join(layout.checkpoint_dir(f"{model_name}/run-{key}"), "state.pt")


def _drop_checkpoint(path: str | None) -> None:
    if path:
        layout.remove_tree(path.rsplit("/", 1)[0])


def _max_half_width(rows: list[dict]) -> float:
    """The widest half-width of the layers' CE-recovered 95% intervals (layers without one, whose ablation changes
    nothing, are left out; NaN if none has one)."""
    widths = [(r["ce_recovered_hi"] - r["ce_recovered_lo"]) / 2 for r in rows]
    return max((w for w in widths if not math.isnan(w)), default=float("nan"))


def _evaluate(
    model,
    model_name: str,
    config: TranscoderTrainConfig,
    tcs: dict,
    results: dict[int, TrainResult],
    device: str,
) -> tuple[dict[int, dict], list[int]]:
    """Each layer spliced alone on the held-out sample: (metrics per layer, the layers whose mean-ablation
    baseline came from the cache). Baselines computed here are cached for the next version of the layer."""
    tokens, ids = corpus_store.sample_contexts("eval", config.eval_contexts, config.eval_seed)
    means = {layer: r.y_mean for layer, r in results.items()}
    massive = {
        layer: (r.y_mean, config.outlier_norm * r.scale) for layer, r in results.items()
    }  # the trainer's threshold for massive activations
    how = {"bf16": config.bf16, "device": torch.device(device).type, "batch_size": config.eval_batch_size}
    keys = {
        layer: eval_baselines.baseline_key(model_name, layer, means[layer], ids, tokens, how) for layer in tcs
    }
    cached = eval_baselines.read(keys)
    with autocast(device, config.bf16):
        metrics = evaluate_each(
            model,
            tcs,
            tokens,
            means,
            massive,
            batch_size=config.eval_batch_size,
            progress=True,
            ablated=cached,
            seed=config.eval_seed,
        )
    fresh = {
        layer: (keys[layer], metrics[layer]["ablated_per_context"]) for layer in tcs if layer not in cached
    }
    eval_baselines.write(model_name, fresh, tokens.shape[1] - 1)
    return metrics, sorted(cached)


@dg.asset(
    partitions_def=settings.layer_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["contexts"],
    group_name="transcoders",
    kinds={"pytorch", "duckdb"},
)
def transcoders(
    context: dg.AssetExecutionContext, config: TranscoderTrainConfig, atlas_model: AtlasModel
) -> dg.MaterializeResult:
    """A transcoder per layer imitating its MLP: weights (SAELens layout), training curve and held-out metrics."""
    layers = settings.partition_layers(context)
    config.validate()
    model = atlas_model.load()
    check_layers(model, layers)
    thresholds = config.thresholds()
    device = atlas_model.torch_device
    t0 = time.perf_counter()
    results, recipes = _train(context, config, atlas_model, layers)
    train_s = time.perf_counter() - t0
    tcs = {layer: r.transcoder.to(device) for layer, r in results.items()}
    t1 = time.perf_counter()
    metrics, reused = _evaluate(model, atlas_model.model_name, config, tcs, results, device)
    eval_s = time.perf_counter() - t1
    rows = []
    for layer in layers:
        m, res, tc = metrics[layer], results[layer], tcs[layer]
        passed, reason = gate(m, thresholds)
        misses = goal_misses(m, thresholds)
        tid = tc_store.transcoder_id(
            atlas_model.model_name, layer, tc.cfg.architecture, tc.d_sae, recipes[layer]
        )
        provenance = {
            **recipes[layer],
            "hook_name": tc.cfg.hook_name,
            "hook_name_out": tc.cfg.hook_name_out,
            "source": config.source,
            "y_mean": res.y_mean.tolist(),
            "target_scale": res.scale,
            "train_seconds": train_s,
            "eval": {"split": "eval", "contexts": config.eval_contexts, "sample_seed": config.eval_seed},
        }
        tc.cfg.provenance = {"train_tokens": res.train_tokens, "seed": config.seed, "corpus_split": "train"}
        if "continue_from" in recipes[layer]:
            tc.cfg.provenance["continue_from"] = recipes[layer]["continue_from"]
        curve = pl.DataFrame(res.curve)
        tc_store.save_transcoder(
            tc.cpu(),
            tid,
            provenance,
            res.train_tokens,
            curve,
            {
                **{k: v for k, v in m.items() if k in tc_store.METRIC_COLUMNS},
                "gate_passed": passed,
                "gate_reason": reason,
                "goal_misses": "; ".join(misses),
                "thresholds": thresholds.asdict(),
            },
            make_current=True,
            state=res.state,
        )
        verdict = "passed" if passed else "FAILED: " + reason
        (context.log.info if passed else context.log.warning)(
            f"L{layer} {tid}: gate {verdict}; goals missed: {misses or 'none'}"
        )
        rows.append(
            {
                "transcoder_id": tid,
                "layer": layer,
                **{
                    k: m[k]
                    for k in (
                        "l0",
                        "fvu",
                        "fvu_typical",
                        "ce_recovered",
                        "ce_recovered_lo",
                        "ce_recovered_hi",
                        "kl",
                        "dead_frac",
                    )
                },
                "delta_ce": m["ce_spliced"] - m["ce_clean"],
                "delta_ce_ablated": m["ce_ablated"] - m["ce_clean"],
                "gate": "pass" if passed else reason,
                "goals_missed": "; ".join(misses),
                "_curve": curve,
            }
        )
    table = pl.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    return dg.MaterializeResult(
        metadata={
            "metrics": md_table(table),
            "training_curve": _curve_plot(rows[-1]["_curve"]),
            "transcoder_ids": ", ".join(r["transcoder_id"] for r in rows),
            "ce_recovered_max_half_width": _max_half_width(rows),
            "ablation_baselines_reused": dg.MetadataValue.json(reused),
            "train_seconds": round(train_s),
            "eval_seconds": round(eval_s),
            "train_tokens_per_s_per_layer": round(
                (results[layers[-1]].train_tokens - results[layers[-1]].start_tokens) / train_s
            ),
            "n_eval_contexts": config.eval_contexts,
        }
    )


SpliceConfig = pydantic.create_model(
    "SpliceConfig",
    __base__=EvalConfig,
    __module__=__name__,
    __doc__="Evaluation settings, and bf16 as in `transcoders`.",
    **fields_of(TrainConfig, only=("bf16",)),
)


@dg.asset(deps=["transcoders"], group_name="transcoders", kinds={"pytorch", "duckdb"})
def splice_metrics(
    context: dg.AssetExecutionContext, config: SpliceConfig, atlas_model: AtlasModel
) -> dg.MaterializeResult:
    """Next-token loss with every layer's current transcoder spliced in at once, against mean-ablating every one
    of those MLPs (rows in `splice_metrics`)."""
    config.validate()
    model_name = atlas_model.model_name
    layers = settings.atlas_layers(context.instance)
    listed = tc_store.list_transcoders(model_name).filter(pl.col("layer").is_in(layers))
    if listed.height == 0:
        raise LookupError(f"No transcoders for {model_name}; materialize `transcoders` first.")
    device = atlas_model.torch_device
    tcs, means = {}, {}
    for tid, layer in zip(listed["transcoder_id"], listed["layer"]):
        tcs[layer] = tc_store.load_transcoder(tid, device=device)
        means[layer] = torch.tensor(tc_store.transcoder_row(tid)["config"]["y_mean"])
    tokens, _ = corpus_store.sample_contexts("eval", config.eval_contexts, config.eval_seed)
    with autocast(device, config.bf16):
        res = evaluate(
            atlas_model.load(),
            tcs,
            tokens,
            means,
            batch_size=config.eval_batch_size,
            zero_ablation=False,
            progress=True,
        )
    tc_store.write_splice_metrics(model_name, list(tcs), listed["transcoder_id"].to_list(), res)
    context.log.info(f"all layers {sorted(tcs)} spliced: ce_recovered {res['ce_recovered']:.3f}")
    summary = pl.DataFrame(
        {
            "layers": [",".join(map(str, sorted(tcs)))],
            **{k: [res[k]] for k in ("ce_clean", "ce_spliced", "ce_ablated", "ce_recovered", "kl")},
            "delta_ce": [res["ce_spliced"] - res["ce_clean"]],
        }
    )
    return dg.MaterializeResult(
        metadata={
            "splice": md_table(summary),
            "ce_recovered": float(res["ce_recovered"]),
            "n_layers": len(tcs),
            "n_ce_tokens": res["n_ce_tokens"],
        }
    )


def _current_rows(context: dg.AssetCheckExecutionContext, model_name: str) -> tuple[pl.DataFrame, list[int]]:
    """The current transcoder rows of the check's layers, and the layers that have none."""
    partitioned = context.has_partition_key or context.has_partition_key_range
    layers = (
        sorted(int(k) for k in context.partition_keys)
        if partitioned
        else settings.atlas_layers(context.instance)
    )
    rows = tc_store.list_transcoders(model_name).filter(pl.col("layer").is_in(layers))
    return rows, sorted(set(layers) - set(rows["layer"].to_list()))


# Not blocking in Dagster's sense: a run covers a range of layers, and a blocking failure would skip the downstream
# steps of every layer in it. The gate is enforced per layer instead: `features` and `feature_tokens` skip a layer
# whose transcoder failed it (with the reason in their metadata), and the build exits non-zero naming the layers.
@dg.asset_check(
    asset=transcoders,
    blocking=False,
    partitions_def=settings.layer_partitions,
    description="Gate: each layer's current transcoder is not broken (typical-token FVU, and CE recovered on "
    "layers whose MLP matters); see interp/quality.py. Downstream steps skip a layer that fails it.",
)
def transcoder_gate(context: dg.AssetCheckExecutionContext, atlas_model: AtlasModel) -> dg.AssetCheckResult:
    rows, missing = _current_rows(context, atlas_model.model_name)
    report = rows.select(
        "layer", "transcoder_id", "fvu_typical", "ce_recovered", "gate_passed", "gate_reason"
    )
    failed = rows.filter(~pl.col("gate_passed").fill_null(False))["layer"].to_list()
    return dg.AssetCheckResult(
        passed=not failed and not missing,
        metadata={
            "layers": md_table(report),
            "failed": dg.MetadataValue.json(failed),  # read by assets.build
            "missing": dg.MetadataValue.json(missing),
        },
    )


@dg.asset_check(
    asset=transcoders,
    blocking=False,
    partitions_def=settings.layer_partitions,
    description="Warning: quality goals (CE recovered >= 0.90 where the MLP matters, L0 <= 32, dead <= 5%).",
)
def transcoder_goals(context: dg.AssetCheckExecutionContext, atlas_model: AtlasModel) -> dg.AssetCheckResult:
    rows, missing = _current_rows(context, atlas_model.model_name)
    report = rows.select("layer", "ce_recovered", "l0", "dead_frac", "goal_misses")
    missed = rows.filter(pl.col("goal_misses").fill_null("") != "")["layer"].to_list()
    return dg.AssetCheckResult(
        passed=not missed and not missing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"layers": md_table(report), "missed": str(missed), "missing": str(missing)},
    )


ASSETS = [transcoders, splice_metrics]
CHECKS = [transcoder_gate, transcoder_goals]
