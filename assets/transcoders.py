"""Assets `transcoders` (one per layer) and `splice_metrics` (all trained layers spliced at once), with blocking
quality checks.

`transcoders` trains on the layer's train activation shards (interp.train; resumable from a checkpoint under
$ATLAS_HOME/checkpoints), evaluates on held-out contexts with the transcoder spliced into the model
(interp.evals), applies the quality gate (FVU, dead fraction, CE recovered; thresholds in the config) and writes
weights + `transcoders` / `training_curves` / `transcoder_metrics` rows (storage.transcoders). The database is
opened only for short reads and the final write, so layers can train in parallel processes. A failed gate is
recorded, not raised: the checks below fail (blocking downstream assets in the same run) and `features` skips
the layer.
"""

import base64
import dataclasses
import io
import json
import time

import dagster as dg
import polars as pl
import torch

from assets import resources, settings
from assets.metadata import md_table
from interp.evals import evaluate, evaluate_layer, reconstruction_metrics
from interp.model import mlp_hooks
from interp.train import TrainConfig, train
from interp.transcoder import TranscoderConfig
from storage import activations as act_store
from storage import corpus as corpus_store
from storage import layout
from storage import transcoders as tc_store

_TRAIN = TrainConfig()  # one source of truth for training defaults, with their reasons (interp/train.py)


class TranscoderTrainConfig(dg.Config):
    """Training, evaluation and gate settings. Defaults fit ~1.5-2 min per SmolLM2 layer on 2 CPU cores."""

    architecture: str = _TRAIN.architecture  # 'topk' (sparse, fast on CPU) or 'relu' (ReLU + L1, the paper)
    expansion_factor: int = 8  # d_sae = expansion_factor x d_model
    k: int = _TRAIN.k  # topk: active features per token (at most)
    skip: bool = _TRAIN.skip  # also learn a linear skip connection x @ W_skip.T
    l1_coefficient: float = _TRAIN.l1_coefficient  # relu only
    l1_warmup_steps: int = _TRAIN.l1_warmup_steps
    lr: float = _TRAIN.lr
    lr_warmup_steps: int = _TRAIN.lr_warmup_steps
    batch_size: int = _TRAIN.batch_size  # tokens per step
    train_tokens: int = _TRAIN.train_tokens  # ~1.5 epochs over the default 260k harvested tokens
    seed: int = _TRAIN.seed
    checkpoint_every: int = _TRAIN.checkpoint_every  # steps between resumable checkpoints (0 = none)
    # loss metrics: this many held-out contexts, 3 forward passes each; the reconstruction metrics use every
    # held-out activation shard (no forward pass)
    eval_contexts: int = 32
    eval_batch_size: int = 8
    zero_ablation: bool = False  # also measure ce_zero_ablated (one more forward pass per context)
    # quality gate: a transcoder failing any of these is recorded as failed and its layer is not mined
    max_fvu: float = (
        1.0  # no better than predicting the mean; FVU is dominated by massive-activation tokens on
    )
    # some layers (SmolLM2 L11: 0.1% of tokens carry 99% of the variance), so CE recovered is the sharper gate
    max_dead_frac: float = 0.25
    min_ce_recovered: float = 0.6

    def train_config(self, d_model: int, device: str) -> TrainConfig:
        return TrainConfig(
            architecture=self.architecture,
            d_sae=self.expansion_factor * d_model,
            k=self.k,
            skip=self.skip,
            l1_coefficient=self.l1_coefficient,
            l1_warmup_steps=self.l1_warmup_steps,
            lr=self.lr,
            lr_warmup_steps=self.lr_warmup_steps,
            batch_size=self.batch_size,
            train_tokens=self.train_tokens,
            seed=self.seed,
            checkpoint_every=self.checkpoint_every,
            device=device,
        )

    def thresholds(self) -> dict[str, float]:
        return {
            "max_fvu": self.max_fvu,
            "max_dead_frac": self.max_dead_frac,
            "min_ce_recovered": self.min_ce_recovered,
        }


def gate(metrics: dict, thresholds: dict[str, float]) -> tuple[bool, str]:
    """(passed, reason): every failed threshold named with its value; NaN metrics fail."""
    fails = []
    if not metrics["fvu"] <= thresholds["max_fvu"]:
        fails.append(f"fvu {metrics['fvu']:.3f} > {thresholds['max_fvu']}")
    if not metrics["dead_frac"] <= thresholds["max_dead_frac"]:
        fails.append(f"dead_frac {metrics['dead_frac']:.3f} > {thresholds['max_dead_frac']}")
    if not metrics["ce_recovered"] >= thresholds["min_ce_recovered"]:
        fails.append(f"ce_recovered {metrics['ce_recovered']:.3f} < {thresholds['min_ce_recovered']}")
    return not fails, "; ".join(fails)


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


def _train_layer(context: dg.AssetExecutionContext, config: TranscoderTrainConfig, layer: int) -> dict:
    model_name = settings.model_name()
    paths = act_store.shard_paths(model_name, layer, "train")  # one short read; training holds no DB handle

    def chunks():
        for path in paths:
            yield act_store.read_shard(path)

    model = resources.model()
    d_model = model.cfg.d_model
    cfg = config.train_config(d_model, settings.device())
    tid = tc_store.transcoder_id(model_name, layer, cfg.architecture, cfg.d_sae)
    hook_in, hook_out = mlp_hooks(layer)
    tc_cfg = TranscoderConfig(
        d_in=d_model,
        d_sae=cfg.d_sae,
        d_out=d_model,
        hook_name=hook_in,
        hook_name_out=hook_out,
        model_name=model_name,
        layer=layer,
    )
    ckpt = (
        None if layout.is_remote(layout.atlas_home()) else layout.join(layout.checkpoint_dir(tid), "state.pt")
    )
    t0 = time.perf_counter()
    result = train(
        chunks,
        cfg,
        tc_cfg,
        checkpoint_path=ckpt,
        on_log=lambda r: context.log.info(
            f"L{layer} step {r['step']}/{cfg.steps}: fvu {r['fvu']:.4f} l0 {r['l0']:.1f} dead {r['dead_frac']:.3f}"
        ),
    )
    train_s = time.perf_counter() - t0
    tokens, _ = corpus_store.load_contexts("eval", limit=config.eval_contexts)
    t1 = time.perf_counter()
    tc = result.transcoder.to(settings.device())
    metrics = evaluate_layer(
        model,
        tc,
        layer,
        tokens,
        result.y_mean,
        batch_size=config.eval_batch_size,
        zero_ablation=config.zero_ablation,
    )
    eval_shards = act_store.shard_paths(model_name, layer, "eval")
    metrics.update(reconstruction_metrics(tc, (act_store.read_shard(p) for p in eval_shards)))
    eval_s = time.perf_counter() - t1
    passed, reason = gate(metrics, config.thresholds())
    provenance = {
        "train": dataclasses.asdict(cfg),
        "hook_name": hook_in,
        "hook_name_out": hook_out,
        "activation_shards": paths,
        "y_mean": result.y_mean.tolist(),
        "train_seconds": train_s,
    }
    tc.cfg.provenance = {"train_tokens": result.train_tokens, "seed": cfg.seed, "corpus_split": "train"}
    curve = pl.DataFrame(result.curve)
    tc_store.save_transcoder(
        tc.cpu(),
        tid,
        provenance,
        result.train_tokens,
        curve,
        {**metrics, "gate_passed": passed, "gate_reason": reason, "thresholds": config.thresholds()},
    )
    if ckpt:
        layout.remove_tree(layout.checkpoint_dir(tid))
    log = context.log.info if passed else context.log.warning
    log(f"L{layer} {tid}: gate {'passed' if passed else 'FAILED: ' + reason}")
    return {
        "transcoder_id": tid,
        "layer": layer,
        **{
            k: metrics[k] for k in ("l0", "fvu", "ce_clean", "ce_spliced", "ce_ablated", "ce_recovered", "kl")
        },
        "delta_ce": metrics["ce_spliced"] - metrics["ce_clean"],
        "dead_frac": metrics["dead_frac"],
        "gate": "pass" if passed else reason,
        "train_tok_per_s": result.train_tokens / train_s,
        "eval_s": eval_s,
        "_curve": curve,
    }


@dg.asset(
    partitions_def=settings.layer_partitions,
    deps=["activations"],
    group_name="transcoders",
    kinds={"pytorch", "duckdb"},
)
def transcoders(context: dg.AssetExecutionContext, config: TranscoderTrainConfig) -> dg.MaterializeResult:
    """A transcoder per layer imitating its MLP: weights (SAELens layout), training curve and held-out metrics."""
    rows = [_train_layer(context, config, layer) for layer in settings.partition_layers(context)]
    table = pl.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    return dg.MaterializeResult(
        metadata={
            "metrics": md_table(table),
            "training_curve": _curve_plot(rows[-1]["_curve"]),
            "transcoder_ids": ", ".join(r["transcoder_id"] for r in rows),
            "ce_recovered": float(rows[-1]["ce_recovered"]),
            "fvu": float(rows[-1]["fvu"]),
            "l0": float(rows[-1]["l0"]),
        }
    )


class SpliceConfig(dg.Config):
    eval_contexts: int = 32
    eval_batch_size: int = 8


@dg.asset(deps=["transcoders"], group_name="transcoders", kinds={"pytorch", "duckdb"})
def splice_metrics(context: dg.AssetExecutionContext, config: SpliceConfig) -> dg.MaterializeResult:
    """Next-token loss with every layer's latest transcoder spliced in at once (rows in `splice_metrics`)."""
    model_name = settings.model_name()
    listed = tc_store.list_transcoders(model_name).filter(pl.col("layer").is_in(settings.layers()))
    if listed.height == 0:
        raise LookupError(f"No transcoders for {model_name}; materialize `transcoders` first.")
    device = settings.device()
    tcs, means = {}, {}
    for tid, layer in zip(listed["transcoder_id"], listed["layer"]):
        tcs[layer] = tc_store.load_transcoder(tid, device=device)
        means[layer] = torch.tensor(tc_store.transcoder_row(tid)["config"]["y_mean"])
    tokens, _ = corpus_store.load_contexts("eval", limit=config.eval_contexts)
    res = evaluate(
        resources.model(), tcs, tokens, means, batch_size=config.eval_batch_size, zero_ablation=False
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
        }
    )


def _check(metric: str, threshold: str, ok) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=transcoders,
        name=f"transcoder_{metric}",
        blocking=True,
        partitions_def=settings.layer_partitions,
        description=f"Held-out {metric} of each layer's latest transcoder within `{threshold}` (asset config).",
    )
    def check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        listed = tc_store.list_transcoders(settings.model_name())
        partitioned = context.has_partition_key or context.has_partition_key_range
        layers = [int(k) for k in context.partition_keys] if partitioned else settings.layers()
        rows = listed.filter(pl.col("layer").is_in(layers))
        bad, report = [], []
        for r in rows.iter_rows(named=True):
            limit = json.loads(r["thresholds"] or "{}").get(threshold)
            good = limit is not None and ok(r[metric], limit)
            report.append({"layer": r["layer"], metric: r[metric], threshold: limit, "passed": good})
            if not good:
                bad.append(r["layer"])
        missing = sorted(set(layers) - set(rows["layer"].to_list()))
        return dg.AssetCheckResult(
            passed=not bad and not missing,
            metadata={
                "layers": md_table(pl.DataFrame(report)) if report else "none",
                "failed": str(bad),
                "missing": str(missing),
            },
        )

    return check


ASSETS = [transcoders, splice_metrics]
CHECKS = [
    _check("fvu", "max_fvu", lambda v, t: v <= t),
    _check("dead_frac", "max_dead_frac", lambda v, t: v <= t),
    _check("ce_recovered", "min_ce_recovered", lambda v, t: v >= t),
]
