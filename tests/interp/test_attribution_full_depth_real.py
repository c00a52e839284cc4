"""Full-depth graphs on the real SmolLM2 (slow): a transcoder at every one of its 30 layers (random, built in the
test: structure, not quality, is under test), the IOI target given as text, influence pruning, scores, and the
bad inputs on the real tokenizer and context length."""

from __future__ import annotations

import pytest
import torch

from interp.attribution import PromptCache, attribute, parse_target, prune, target_string
from interp.attribution.prune import signed_influence
from interp.model import load_model
from tests.interp.test_edges import make_transcoders

pytestmark = pytest.mark.slow

PROMPT, TARGET = "When Mary and John went to the store, John gave a drink to", 'logit:" Mary"-" John"'


@pytest.fixture(scope="module")
def real(real_data):
    model = load_model("smollm2-135m", device="cpu", cache_dir=real_data["models"])
    n = model.cfg.n_layers
    tcs = make_transcoders(list(range(n)), model.cfg.d_model, d_sae=256, seed=0)
    with torch.no_grad():
        for tc in tcs.values():
            tc.b_enc.fill_(-1.0)  # sparse, like a trained transcoder
            tc.W_dec.mul_(
                5.0
            )  # outputs on the scale of SmolLM2's MLP outputs, so features compete with heads
    return model, tcs


def test_full_depth_graph_from_a_text_target_is_pruned_balanced_and_scored(real):
    model, tcs = real
    tok = model.tokenizer
    tokens = torch.tensor([tok.bos_token_id] + tok(PROMPT, add_special_tokens=False)["input_ids"])
    target = parse_target(TARGET, tok)
    assert target_string(target, len(tokens), tokenizer=tok) == f'logit:" Mary"-" John"@{len(tokens) - 1}'
    pc = PromptCache(model, tokens, tcs)
    full = attribute(model, tokens, tcs, target, 16, 3, cache=pc, tokenizer=tok)
    graph = prune(full, node_threshold=0.8)
    signed_influence(graph)
    assert (
        full.config["layers"] == list(range(30)) and graph.nodes["target"].label == 'logit " Mary" − " John"'
    )
    layers = {n.layer for n in full.nodes.values() if n.kind == "feature"}
    assert len(layers) >= 5  # the search reaches features across the depth of the model
    assert len(graph.nodes) < len(full.nodes)
    for g in (full, graph):
        for node_id, node in g.nodes.items():
            if node.kind in ("target", "feature", "attn"):
                incoming = list(g.incoming(node_id).values())
                assert sum(incoming) == pytest.approx(
                    node.activation, abs=1e-3 * max(1.0, *map(abs, incoming))
                )
        assert all(0.0 <= v <= 1.0 for v in g.scores.values()) and len(g.scores) == 3


def test_bad_inputs_on_the_real_model_are_clear_errors(real):
    model, tcs = real
    with pytest.raises(ValueError, match=r"is 2 tokens \[' Mary', ' John'\], not one"):
        parse_target('logit:" Mary John"', model.tokenizer)
    n_ctx = model.cfg.n_ctx
    with pytest.raises(ValueError, match=f"longer than the model's context of {n_ctx}"):
        PromptCache(model, torch.ones(n_ctx + 1, dtype=torch.long), tcs)
