"""Faithfulness on the real SmolLM2 model: the attribution of every direct upstream transcoder feature predicts the
change of the target when that feature is really zero-ablated.

Transcoders for layers 0 and 2 are trained here for a few steps on the model's own activations (quality does not
matter: the check is about the attribution of whatever transcoder is spliced in). Targets on three prompts: the
logit difference, and the active layer-2 features at every position. Edges: every active upstream feature at
every position up to the target's. The attribution is the feature's direct effect (`direct_effects`: the
residual path plus every path through attention with patterns frozen, none through another MLP); the ablation
runs the real model with attention patterns, norm scales and the other MLP outputs (the graph's error terms)
frozen, the linear model the graph's edges are defined in.

Printed, not asserted: the correlation of residual-only edges (the attention paths left out) and of the same
ablations with only the attention patterns frozen (downstream MLPs and norms respond: nonlinear, so no longer a
direct effect).
"""

from __future__ import annotations

import glob
import os

import pytest
import torch

from interp.ablation import ablation_effects
from interp.activations import harvest
from interp.attribution import (
    FeatureTarget,
    PromptCache,
    attribute,
    direct_effects,
    parse_target,
)
from interp.faithfulness import pearson
from interp.model import load_model
from interp.train import TrainConfig, train
from interp.transcoder import TranscoderConfig

pytestmark = pytest.mark.slow

PROMPTS = [
    ("When Mary and John went to the store, John gave a drink to", 'logit:" Mary"-" John"'),
    ("In 1999, the company grew. In 2000, it grew again. In 200", 'logit:"1"-"0"'),
    ("Mr. Smith went to Washington. Later that day Mr.", 'logit:" Smith"'),
]
LAYERS = [0, 2]
LOGIT_EDGES = 96


@pytest.fixture(scope="module")
def real(real_data):
    model = load_model("smollm2-135m", device="cpu", cache_dir=real_data["models"])
    tok = model.tokenizer
    corpus = sorted(glob.glob(os.path.join(real_data["corpora"], "sotu", "*.txt")))
    text = " ".join(open(f).read() for f in corpus[:4])
    ids = tok(text, add_special_tokens=False)["input_ids"][: 48 * 63]
    ctx = torch.tensor(ids).reshape(-1, 63)
    ctx = torch.cat([torch.full((ctx.shape[0], 1), tok.bos_token_id), ctx], 1)  # [48, 64]
    acts = {layer: ([], []) for layer in LAYERS}
    for batch in harvest(model, ctx, torch.arange(len(ctx)), LAYERS, batch_size=16):
        for layer in LAYERS:
            acts[layer][0].append(batch.acts[layer][0])
            acts[layer][1].append(batch.acts[layer][1])
    tcs = {}
    for layer in LAYERS:
        x, y = torch.cat(acts[layer][0]), torch.cat(acts[layer][1])
        cfg = TrainConfig(batch_size=512, train_tokens=15_000, buffer_tokens=4096, checkpoint_every=0)
        tc_cfg = TranscoderConfig(d_in=576, d_sae=1152, d_out=576, k=16, layer=layer)
        tcs[layer] = train(lambda x=x, y=y: [{"x": x, "y": y}], cfg, tc_cfg, progress=False).transcoder
    return model, tcs


def _targets(pc: PromptCache, spec: str, tok, n_positions: int) -> list:
    """The prompt's logit target, then the strongest active layer-2 feature at each of the last positions."""
    top = max(LAYERS)
    positions = range(max(1, len(pc.tokens) - n_positions), len(pc.tokens))
    return [parse_target(spec, tok)] + [FeatureTarget(top, int(pc.z[top][t].argmax()), t) for t in positions]


def test_direct_feature_attributions_predict_ablations(real):
    model, tcs = real
    tok = model.tokenizer
    # per target kind: predicted (minus the direct effect), residual-only edge, ablated (frozen), ablated (live)
    rows = {"feature": ([], [], [], []), "logit": ([], [], [], [])}
    for prompt, spec in PROMPTS:
        tokens = torch.tensor([tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"])
        pc = PromptCache(model, tokens, tcs)
        graph = attribute(model, tokens, tcs, parse_target(spec, tok), n_paths=24, n_steps=3, cache=pc)
        # bookkeeping on the real model too
        for node_id, node in graph.nodes.items():
            if node.kind in ("target", "feature", "attn"):
                incoming = graph.incoming(node_id).values()
                assert sum(incoming) == pytest.approx(
                    node.activation, abs=1e-3 * max(1.0, *map(abs, incoming))
                )
        for target in _targets(pc, spec, tok, n_positions=3):
            stage, t, reader, _ = pc.target_reader(target)
            effects = direct_effects(pc, stage, t, reader)
            assert effects.total() == pytest.approx(float(pc.resid[stage, t] @ reader), rel=1e-3, abs=1e-3)
            edges = [(la, s, i) for la, f in effects.features.items() for s, i in f.nonzero().tolist()]
            kind = "feature" if isinstance(target, FeatureTarget) else "logit"
            if kind == "logit":  # each ablation runs all 30 layers: a random sample of the edges
                keep = torch.randperm(len(edges), generator=torch.Generator().manual_seed(0))[:LOGIT_EDGES]
                edges = [edges[k] for k in sorted(keep.tolist())]
            predicted, residual_only, frozen, live = rows[kind]
            predicted += [-float(effects.features[la][s, i]) for la, s, i in edges]
            residual_only += [-float(effects.features[la][s, i]) if s == t else 0.0 for la, s, i in edges]
            frozen += ablation_effects(
                model, tokens, tcs, target, edges, freeze=("pattern", "scale", "mlp")
            ).tolist()
            live += ablation_effects(model, tokens, tcs, target, edges, freeze=("pattern",)).tolist()
    for kind, (predicted, residual_only, frozen, live) in rows.items():
        r_frozen = pearson(predicted, frozen)
        print(
            f"\n{kind} targets, {len(predicted)} edges: correlation {r_frozen:.4f} (direct effects, errors frozen), "
            f"{pearson(residual_only, frozen):.4f} (residual-only edges), "
            f"{pearson(predicted, live):.4f} (only patterns frozen)"
        )
        assert len(predicted) >= 200
        assert r_frozen >= 0.95
        scale = max(map(abs, frozen))
        assert max(abs(p - m) for p, m in zip(predicted, frozen)) <= 1e-2 * scale
