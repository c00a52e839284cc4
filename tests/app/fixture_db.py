"""A small but complete atlas database for the app tests, written through storage.db like the real assets.

Two transcoders (layers 0 and 1) of the tiny test model with real weight files (so the live page can run them),
every table filled, and hostile token strings in the vocab, the contexts, a label and a graph prompt.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import torch

from interp.transcoder import Transcoder, TranscoderConfig
from storage import layout
from storage.db import row_writes

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
SCRIPT_ID, IMG_ID = 100, 101  # vocab ids of the hostile tokens (beyond the tiny tokenizer's own ids)
D_SAE, CTX_LEN, N_CONTEXTS = 16, 12, 6
HOSTILE_FEATURE = 3  # feature whose examples, label and token effects contain the hostile tokens
FIRST_FEATURE = 6  # an artifact: every example fires at position 1, right after BOS (its window starts at 0)
DEAD_FEATURE = 9  # never fired: no examples, zero statistics
TOKEN_FEATURE = 12  # an artifact: dense (20% of tokens) and every top example on the same token
N_EVAL_TOKENS = 1000


def transcoder_ids(model: str) -> list[str]:
    return [f"{model}/L{layer}/relu-{D_SAE}" for layer in (0, 1)]


def build(model_dir: str, d_model: int = 32, model: str | None = None) -> dict:
    """Fill $ATLAS_HOME/atlas.duckdb for the checkpoint in `model_dir`, stored under the name `model` (default:
    the folder itself, which interp.model.load_model accepts); returns the ids the tests address."""
    from transformers import AutoTokenizer

    rng = np.random.default_rng(0)
    model = model or model_dir
    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = {i: s for s, i in tok.get_vocab().items()} | {SCRIPT_ID: SCRIPT, IMG_ID: IMG}
    tids = transcoder_ids(model)
    tables: list[tuple[str, pl.DataFrame, dict]] = []

    def add(name: str, rows: dict | pl.DataFrame) -> None:
        tables.append((name, rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows), {}))

    add(
        "vocab",
        {"model": [model] * len(vocab), "token_id": list(vocab), "token_str": list(vocab.values())},
    )
    contexts = rng.integers(3, 60, size=(N_CONTEXTS, CTX_LEN))
    contexts[:, 0] = 1  # BOS
    contexts[0, 4], contexts[0, 5] = SCRIPT_ID, IMG_ID
    add(
        "contexts",
        {
            "context_id": list(range(N_CONTEXTS)),
            "split": ["eval"] * N_CONTEXTS,
            "source": ["fixture.txt"] * N_CONTEXTS,
            "tokens": [row.tolist() for row in contexts],
            "text": ["".join(vocab[i] for i in row[1:]) for row in contexts],
        },
    )
    for layer, tid in enumerate(tids):
        torch.manual_seed(layer)
        cfg = TranscoderConfig(
            d_in=d_model,
            d_sae=D_SAE,
            d_out=d_model,
            architecture="relu",
            skip=False,
            model_name=model,
            layer=layer,
        )
        path = layout.transcoder_dir(tid)
        Transcoder(cfg).save(path)
        config = {
            "model": model,
            "layer": layer,
            "corpus": "fixture",
            "l1_coefficient": 1e-3,
            "seed": layer,
        }
        add(
            "transcoders",
            {
                "transcoder_id": [tid],
                "model": [model],
                "layer": [layer],
                "architecture": ["relu"],
                "d_in": [d_model],
                "d_sae": [D_SAE],
                "train_tokens": [10_000],
                "weights_path": [path],
                "config": [json.dumps(config)],
            },
        )
        add(
            "transcoder_metrics",
            {
                "transcoder_id": [tid],
                "n_eval_tokens": [1000],
                "l0": [12.0 + layer],
                "fvu": [0.2 + 0.1 * layer],
                "ce_clean": [3.0],
                "ce_spliced": [3.2],
                "ce_ablated": [4.0],
                "ce_recovered": [0.8],
                # layer 0 with its bootstrap interval, layer 1 as stored before intervals (NULL)
                "ce_recovered_lo": [0.76 if layer == 0 else None],
                "ce_recovered_hi": [0.84 if layer == 0 else None],
                "n_eval_contexts": [256 if layer == 0 else None],
                "kl": [0.1],
                "dead_frac": [0.05],
                "dense_frac": [0.0],
            },
        )
        steps = list(range(0, 100, 10))
        add(
            "training_curves",
            {
                "transcoder_id": [tid] * len(steps),
                "step": steps,
                "tokens": [s * 64 for s in steps],
                "loss": [1 / (1 + s) for s in steps],
                "fvu": [0.9 / (1 + s / 10) for s in steps],
                "l0": [30.0 - s / 5 for s in steps],
            },
        )
        density = rng.uniform(0.01, 0.3, D_SAE)
        density[DEAD_FEATURE], density[HOSTILE_FEATURE], density[TOKEN_FEATURE] = 0.0, 0.02, 0.2
        n_active = (density * N_EVAL_TOKENS).astype(int)
        labels = [f"feature {f} of layer {layer}" for f in range(D_SAE)]
        labels[HOSTILE_FEATURE] = f"fires on {SCRIPT}"
        edges = [0.25, 0.5, 1.0, 2.0, 4.0]  # log-spaced, as the miner writes them
        dead = [f == DEAD_FEATURE for f in range(D_SAE)]
        add(
            "features",
            {
                "transcoder_id": [tid] * D_SAE,
                "feature": list(range(D_SAE)),
                "density": density.tolist(),
                "mean_act": [0.0 if d else m for d, m in zip(dead, rng.uniform(0.5, 1.0, D_SAE))],
                "max_act": [0.0 if d else 2.0 + f / 10 for f, d in enumerate(dead)],
                "n_active": n_active.tolist(),
                "n_contexts": [min(int(n), N_CONTEXTS * 10) // 3 for n in n_active],
                "n_tokens": [N_EVAL_TOKENS] * D_SAE,
                "quantiles": [[0.0, 0.0, 0.0] if d else [0.2, 0.5, 1.0] for d in dead],
                "quantile_levels": [[0.1, 0.5, 0.9]] * D_SAE,
                "hist_edges": [[] if d else edges for d in dead],
                "hist_counts": [[] if d else [5, 3, 2, 1] for d in dead],
                "label": labels,
            },
        )
        ex = []
        for f in range(D_SAE):
            if f == DEAD_FEATURE:
                continue
            for kind, n in (("top", 3), ("q0", 2), ("q1", 2)):
                for rank in range(n):
                    ctx = {HOSTILE_FEATURE: 0, TOKEN_FEATURE: 1}.get(f, (f + rank) % N_CONTEXTS)
                    position, start = (1, 0) if f == FIRST_FEATURE else (5, 1)
                    acts = np.zeros(8)
                    peak = 2.0 - rank * 0.5 if kind == "top" else 0.3 * (int(kind[1]) + 1)
                    acts[position - start] = peak
                    if position - start:
                        acts[position - start - 1] = peak / 2
                    token = int(contexts[ctx, position])
                    ex.append((tid, f, kind, rank, ctx, position, token, peak, start, acts.tolist()))
        add(
            "feature_examples",
            pl.DataFrame(
                ex,
                schema=[
                    "transcoder_id",
                    "feature",
                    "kind",
                    "rank",
                    "context_id",
                    "position",
                    "token_id",
                    "activation",
                    "window_start",
                    "token_acts",
                ],
                orient="row",
            ),
        )
        fx = []
        for f in range(D_SAE):
            for kind, sign in (("deembed", 1), ("logit_top", 1), ("logit_bottom", -1)):
                ids = [SCRIPT_ID, IMG_ID, 5] if f == HOSTILE_FEATURE else [3 + f, 4 + f, 5 + f]
                fx += [(tid, f, kind, r, i, sign * (1.0 - r / 10)) for r, i in enumerate(ids)]
        add(
            "feature_tokens",
            pl.DataFrame(
                fx, schema=["transcoder_id", "feature", "kind", "rank", "token_id", "value"], orient="row"
            ),
        )
        a_id = tok.convert_tokens_to_ids("a")
        add(
            "token_features",
            {
                "transcoder_id": [tid] * 3,
                "token_id": [a_id, a_id, SCRIPT_ID],
                "rank": [0, 1, 0],
                "feature": [7, 2, HOSTILE_FEATURE],
                "mean_act": [1.5, 0.5, 2.0],
                "count": [10, 4, 1],
            },
        )
        add(
            "feature_neighbors",
            {
                "transcoder_id": [tid] * D_SAE,
                "feature": list(range(D_SAE)),
                "rank": [0] * D_SAE,
                "nb_transcoder_id": [tids[1 - layer]] * D_SAE,
                "nb_feature": [(f + 1) % D_SAE for f in range(D_SAE)],
                "cosine": [0.9] * D_SAE,
            },
        )
    add(
        "feature_edges",
        {
            "src_transcoder_id": [tids[0]] * 3,
            "src_feature": [HOSTILE_FEATURE, 1, 2],
            "dst_transcoder_id": [tids[1]] * 3,
            "dst_feature": [HOSTILE_FEATURE, HOSTILE_FEATURE, 5],
            "via": ["resid", "attn.1.0", "resid"],
            "weight": [0.7, -0.3, 0.2],
            "rank": [0, 1, 0],
        },
    )
    graph_id = "g0"
    # embed(pos 4) -> L0#3 -> L1#3 -> target, plus a weaker embed -> L1#3 edge and an error node (node ids as
    # interp.attribution writes them: the target is 'target')
    nodes = [
        ("e4", "embed", None, 4, SCRIPT_ID, None, 1.0, 0.1, "embed"),
        ("f0", "feature", 0, 4, HOSTILE_FEATURE, tids[0], 2.0, 0.6, f"L0 {SCRIPT}"),
        ("f1", "feature", 1, 5, HOSTILE_FEATURE, tids[1], 1.5, 0.8, "L1 feature"),
        ("err", "error", 1, 5, None, None, 0.2, 0.1, IMG),
        ("target", "target", None, 5, None, None, 3.0, 1.0, "target"),
    ]
    node_cols = [
        "node_id",
        "kind",
        "layer",
        "position",
        "feature",
        "transcoder_id",
        "activation",
        "influence",
        "label",
    ]
    gnodes = pl.DataFrame(nodes, schema=node_cols, orient="row").with_columns(graph_id=pl.lit(graph_id))
    gedges = pl.DataFrame(
        [
            ("e4", "f0", 2.0),
            ("f0", "f1", 1.0),
            ("e4", "f1", 0.5),
            ("f1", "target", 2.4),
            ("err", "target", 0.6),
        ],
        schema=["src_node", "dst_node", "weight"],
        orient="row",
    ).with_columns(graph_id=pl.lit(graph_id))
    add(
        "graphs",
        {
            "graph_id": [graph_id],
            "model": [model],
            "prompt": [f"The tag {SCRIPT} appears"],
            "tokens": [contexts[0][:6].tolist()],
            "target": [f"feature:{tids[1]}:{HOSTILE_FEATURE}@5"],
            "target_value": [3.0],
            "method": ["exact"],
            "config": [json.dumps({"method": "exact", "max_feature_nodes": 5})],
        },
    )
    add("graph_nodes", gnodes)
    add("graph_edges", gedges)
    add(
        "graph_faithfulness",
        {
            "graph_id": [graph_id] * 3,
            # stored out of the ladder's order: the page shows them in interp.faithfulness.SETTINGS order
            "setting": ["nothing_frozen", "replacement_model", "attention_frozen"],
            "n_nodes": [2, 2, 2],
            "pearson": [0.41, 0.99, 0.97],
            "spearman": [0.5, 1.0, 1.0],
            "sign_agreement": [0.5, 1.0, 1.0],
        },
    )
    add(
        "graph_interventions",
        {
            "graph_id": [graph_id] * 2,
            "setting": ["attention_frozen"] * 2,
            "node_id": ["f0", "f1"],
            "layer": [0, 1],
            "position": [4, 5],
            "feature": [HOSTILE_FEATURE] * 2,
            "predicted": [-0.6, -0.8],
            "actual": [-0.55, -0.9],
        },
    )
    row_writes.write_many(tables)
    return {"model": model, "transcoders": tids, "graph": graph_id, "feature": HOSTILE_FEATURE}
