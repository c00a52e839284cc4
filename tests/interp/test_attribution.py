"""Attribution graphs on the tiny Llama: exact decomposition, bookkeeping, and an exact match with real ablations
where the model between source and target is linear (patterns and norm scales frozen, no MLP in between)."""

from __future__ import annotations

import pytest
import torch

from interp.ablation import ablation_effects
from interp.attribution import (
    PASS_THROUGH_KINDS,
    FeatureTarget,
    LogitTarget,
    PromptCache,
    attribute,
    decompose,
    decompose_many,
    direct_effects,
    parse_target,
    target_string,
)
from interp.faithfulness import pearson
from tests.interp.test_edges import make_transcoders

TOKENS = torch.tensor([1, 20, 31, 15, 22, 9, 40, 41, 12, 33])


@pytest.fixture(scope="module")
def tcs(tiny_model):
    out = make_transcoders([0, 1, 2], tiny_model.cfg.d_model, d_sae=48, seed=3)
    with torch.no_grad():
        for tc in out.values():
            tc.b_enc.fill_(-0.3)  # fewer active features, like a trained sparse transcoder
            tc.W_dec.mul_(0.01)  # outputs on the scale of the tiny model's MLPs
            tc.b_dec.normal_(0, 0.001)
    return out


def test_decomposition_is_exact_at_every_stage(tiny_model, tcs):
    pc = PromptCache(
        tiny_model, TOKENS, {0: tcs[0], 2: tcs[2]}
    )  # layer 1 MLP without transcoder -> error leaf
    g = torch.Generator().manual_seed(0)
    for stage in range(2 * tiny_model.cfg.n_layers + 1):
        for t in (0, 4, len(TOKENS) - 1):
            w = torch.randn(tiny_model.cfg.d_model, generator=g)
            d = decompose(pc, stage, t, w)
            expected = float(pc.resid[stage, t] @ w)
            assert d.total() == pytest.approx(expected, rel=1e-4, abs=1e-5)
            assert d.attn.shape == ((stage + 1) // 2, tiny_model.cfg.n_heads, t + 1)


def test_a_batch_of_readers_decomposes_like_each_alone(tiny_model, tcs):
    """decompose_many over readers at mixed stages and positions (BOS included): each part sums to its reader's
    value and equals the reader decomposed alone, candidate by candidate and leaf by leaf."""
    pc = PromptCache(tiny_model, TOKENS, {0: tcs[0], 2: tcs[2]})
    g = torch.Generator().manual_seed(5)
    at = [(0, 3), (1, 0), (3, 9), (4, 5), (6, 9), (2 * tiny_model.cfg.n_layers, 7), (5, 1)]
    W = torch.randn(len(at), tiny_model.cfg.d_model, generator=g)
    parts = decompose_many(pc, [s for s, _ in at], [t for _, t in at], W)
    for (stage, t), w, part in zip(at, W, parts):
        assert part.total() == pytest.approx(float(pc.resid[stage, t] @ w), rel=1e-4, abs=1e-5)
        alone = decompose(pc, stage, t, w)
        torch.testing.assert_close(part.candidates(), alone.candidates(), rtol=1e-5, atol=1e-6)
        assert part.leaves.keys() == alone.leaves.keys()
        assert part.leaves == pytest.approx(alone.leaves, rel=1e-5, abs=1e-6)
    # without the per-head products: the same features, skips and leaves, and the heads' terms as one sum
    lights = decompose_many(pc, [s for s, _ in at], [t for _, t in at], W, heads=False)
    for part, light in zip(parts, lights):
        assert light.attn.numel() == 0 and light.leaves == pytest.approx(part.leaves, rel=1e-5, abs=1e-6)
        torch.testing.assert_close(light.feat_w, part.feat_w)
        torch.testing.assert_close(light.skip_w, part.skip_w)
        # a difference of float32 sums: its rounding scales with the size of the terms, not of the result
        size = float(part.candidates().abs().sum()) + sum(map(abs, part.leaves.values()))
        assert light.heads_total == pytest.approx(float(part.attn.sum()), abs=1e-6 * size)
        assert light.total() == pytest.approx(part.total(), abs=1e-6 * size)


def check_bookkeeping(graph):
    """Every non-leaf node: incoming edges (features, heads, errors, biases, pruned) sum to its own value."""
    checked = 0
    for node_id, node in graph.nodes.items():
        if node.kind in ("target", "feature", *PASS_THROUGH_KINDS):
            total = sum(graph.incoming(node_id).values())
            assert total == pytest.approx(node.activation, rel=1e-4, abs=1e-5), node_id
            checked += 1
    return checked


def test_bookkeeping_logit_target(tiny_model, tcs):
    target = LogitTarget(token=25, other=30, position=-1)
    graph = attribute(tiny_model, TOKENS, tcs, target, n_paths=40, n_steps=3)
    logits = tiny_model(TOKENS[None])[0, -1]
    assert graph.target_value == pytest.approx(float(logits[25] - logits[30]), rel=1e-5)
    assert graph.target_prob == pytest.approx(float(logits.softmax(-1)[25]), rel=1e-5)
    assert check_bookkeeping(graph) > 5
    kinds = {n.kind for n in graph.nodes.values()}
    assert {"target", "feature", "attn", "embed", "error", "pruned"} <= kinds
    # the strongest direct contributor among features, heads and the embedding is always kept
    # the target's influence is its value by definition (assigned, not summed): equal up to float32 rounding
    assert graph.nodes["target"].influence == pytest.approx(graph.target_value, rel=1e-6, abs=1e-7)
    t = graph.nodes["target"]
    best = float(
        decompose(PromptCache(tiny_model, TOKENS, tcs), t.stage, t.position, t.reader)
        .candidates()
        .abs()
        .max()
    )
    kept = [
        w for s, w in graph.incoming("target").items() if graph.nodes[s].kind in ("feature", "attn", "embed")
    ]
    # the same candidate, computed by the search and by a fresh decompose: float32 rounding only
    assert max(abs(w) for w in kept) == pytest.approx(best, rel=1e-5, abs=1e-7)
    paths = graph.top_paths(5)
    assert paths and all(p[1][0] == "target" for p in paths)
    assert abs(paths[0][0]) >= abs(paths[-1][0])


def test_influence_equals_ablation_exactly_on_a_linear_stretch(tiny_model, tcs):
    """Target: a layer-1 feature. Between MLP 0 and the target sits only attention layer 1, which is linear with
    patterns and norm scales frozen, so the complete graph's influence of each layer-0 feature (direct plus
    through every head and source) must equal the change measured by really ablating it."""
    transcoders = {0: tcs[0], 1: tcs[1]}
    pc = PromptCache(tiny_model, TOKENS, transcoders)
    t = len(TOKENS) - 1
    feature = int(pc.z[1][t].argmax())
    target = FeatureTarget(1, feature, t)
    graph = attribute(tiny_model, TOKENS, transcoders, target, n_paths=100_000, n_steps=3, cache=pc)
    assert check_bookkeeping(graph) > 10 and graph.target_prob is None  # a feature has no token probability
    assert not any(n.kind == "pruned" for n in graph.nodes.values())  # nothing left out
    assert graph.target_value == pytest.approx(float(pc.z[1][t, feature]), rel=1e-5)
    nodes = [n for n in graph.nodes.values() if n.kind == "feature" and n.layer == 0]
    assert len(nodes) > 30 and {n.position for n in nodes} == set(range(1, len(TOKENS)))  # BOS: error only
    ablations = [(0, n.position, n.feature) for n in nodes]
    measured = ablation_effects(tiny_model, TOKENS, transcoders, target, ablations, batch_size=16)
    predicted = torch.tensor([-n.influence for n in nodes])
    torch.testing.assert_close(measured, predicted, atol=1e-5, rtol=1e-3)
    # without freezing the norm scales the same ablations no longer match exactly (the check can fail)
    loose = ablation_effects(tiny_model, TOKENS, transcoders, target, ablations, freeze=("pattern",))
    assert (loose - predicted).abs().max() > 1e-4


def test_direct_effects_sum_to_the_reader_and_match_the_complete_graph(tiny_model, tcs):
    """Completeness at every stage, and on the linear stretch (layer-0 features into a layer-1 feature) the
    backward sweep gives each feature exactly the complete graph's path-summed influence."""
    pc = PromptCache(tiny_model, TOKENS, {0: tcs[0], 2: tcs[2]})
    g = torch.Generator().manual_seed(2)
    for stage in range(2 * tiny_model.cfg.n_layers + 1):
        w = torch.randn(tiny_model.cfg.d_model, generator=g)
        e = direct_effects(pc, stage, 7, w)
        assert e.total() == pytest.approx(float(pc.resid[stage, 7] @ w), rel=1e-4, abs=1e-5)
        assert set(e.features) == {layer for layer in (0, 2) if 2 * layer + 2 <= stage}
    transcoders = {0: tcs[0], 1: tcs[1]}
    pc = PromptCache(tiny_model, TOKENS, transcoders)
    t = len(TOKENS) - 1
    feature = int(pc.z[1][t].argmax())
    graph = attribute(
        tiny_model, TOKENS, transcoders, FeatureTarget(1, feature, t), n_paths=100_000, n_steps=3, cache=pc
    )
    e = direct_effects(pc, 3, t, graph.nodes["target"].reader)
    nodes = [n for n in graph.nodes.values() if n.kind == "feature" and n.layer == 0]
    assert len(nodes) > 30
    for n in nodes:
        assert float(e.features[0][n.position, n.feature]) == pytest.approx(n.influence, rel=1e-4, abs=1e-6)
    assert int((e.features[0] != 0).sum()) == len(nodes)  # every active feature, nothing else


@pytest.mark.parametrize("target", [FeatureTarget(2, -1, -1), LogitTarget(token=25, other=30, position=-1)])
def test_direct_effects_equal_ablations_across_positions_and_layers(tiny_model, tcs, target):
    """Every active feature at every position, with a layer (and, for the logit, several layers) of attention
    and a frozen MLP in between: the direct effect is exactly minus the change from really zero-ablating it with
    patterns, scales and the other MLP outputs frozen. Residual-only direct edges miss the attention paths."""
    transcoders = {0: tcs[0], 2: tcs[2]} if isinstance(target, FeatureTarget) else tcs
    pc = PromptCache(tiny_model, TOKENS, transcoders)
    t = len(TOKENS) - 1
    if isinstance(target, FeatureTarget):
        target = FeatureTarget(2, int(pc.z[2][t].argmax()), t)
    e = direct_effects(pc, *pc.target_reader(target)[:3])
    ablations = [(layer, int(s), int(i)) for layer, f in e.features.items() for s, i in f.nonzero().tolist()]
    assert len({s for _, s, _ in ablations}) == t and len(ablations) > 40
    measured = ablation_effects(
        tiny_model, TOKENS, transcoders, target, ablations, freeze=("pattern", "scale", "mlp")
    )
    predicted = torch.tensor([-float(e.features[layer][s, i]) for layer, s, i in ablations])
    torch.testing.assert_close(measured, predicted, atol=1e-5, rtol=1e-3)
    residual_only = torch.tensor(
        [-float(e.features[layer][s, i]) if s == t else 0.0 for layer, s, i in ablations]
    )
    assert (measured - residual_only).abs().max() > 1e-3  # the attention paths matter: the check can fail


def test_direct_attribution_predicts_ablation_with_live_mlps(tiny_model, tcs):
    """Features at the target position, two layers below a logit target: attribution vs real ablation with the
    MLPs in between recomputed (not exact, but strongly correlated)."""
    target = LogitTarget(token=25, position=-1)
    graph = attribute(tiny_model, TOKENS, tcs, target, n_paths=4, n_steps=1)
    direct = [(s, w) for s, w in graph.incoming("target").items()]
    pc = PromptCache(tiny_model, TOKENS, tcs)
    t = len(TOKENS) - 1
    d = decompose(pc, graph.nodes["target"].stage, t, graph.nodes["target"].reader)
    ablations = [(int(layer), t, int(i)) for layer, i in zip(d.feat_layer, d.feat_index)]
    measured = ablation_effects(tiny_model, TOKENS, tcs, target, ablations)
    assert len(ablations) > 20 and direct
    assert pearson((-d.feat_w).tolist(), measured.tolist()) > 0.9


def test_parse_target_and_canonical_string(tiny_model):
    tok = tiny_model.tokenizer
    assert parse_target("feature:smollm2-135m/L11/relu-4608:123@5") == FeatureTarget(11, 123, 5)
    assert parse_target("feature:L2:7") == FeatureTarget(2, 7, -1)
    t = parse_target('logit:"a"-"b"@-2', tok)
    assert t == LogitTarget(tok("a", add_special_tokens=False)["input_ids"][0], tok("b")["input_ids"][-1], -2)
    assert target_string(t, 10) == f"logit:{t.token}-{t.other}@8"
    assert target_string(FeatureTarget(2, 7), 10, "m/L2/relu-48") == "feature:m/L2/relu-48:7@9"
    with pytest.raises(ValueError, match="not one"):
        parse_target('logit:"ab"', tok)
    with pytest.raises(ValueError, match="is not"):
        parse_target("neuron:3", tok)


def test_decomposition_is_exact_with_skip_transcoders(tiny_model, tcs):
    """The skip path (W_skip x) is its own term: features + b_dec + skip + error still sum to the MLP output, and a
    skip node reads the stream below it exactly (its incoming edges sum to its value), so paths run through it."""
    import dataclasses

    from interp.transcoder import Transcoder

    skipped = {}
    for layer, tc in tcs.items():
        twin = Transcoder(dataclasses.replace(tc.cfg, skip=True))
        state = {**tc.state_dict(), "W_skip": torch.randn(tc.cfg.d_out, tc.cfg.d_in) * 0.05}
        twin.load_state_dict(state)
        skipped[layer] = twin
    pc = PromptCache(tiny_model, TOKENS, skipped)
    g = torch.Generator().manual_seed(1)
    for stage in range(2 * tiny_model.cfg.n_layers + 1):
        w = torch.randn(tiny_model.cfg.d_model, generator=g)
        d = decompose(pc, stage, 6, w)
        assert d.total() == pytest.approx(float(pc.resid[stage, 6] @ w), rel=1e-4, abs=1e-5)
        assert len(d.skip_w) == sum(1 for layer in skipped if 2 * layer + 1 < stage)
    graph = attribute(tiny_model, TOKENS, skipped, LogitTarget(token=25, other=30, position=-1), n_paths=40)
    skips = [n for n, node in graph.nodes.items() if node.kind == "skip"]
    assert skips and check_bookkeeping(graph) > 5
    for n in skips:
        node = graph.nodes[n]
        # the same float32 product in two orders, (x W_skip^T) w against x (W_skip^T w): rounding, ~1e-7 relative
        read = float(pc.resid[node.stage, node.position] @ node.reader)
        assert node.activation == pytest.approx(read, rel=1e-5, abs=1e-5)
        assert (
            graph.edges[(n, node.feeds)] == node.activation
        )  # the same float: the decomposition entry of its dst
    # attribution flows through the skip nodes: some of their inputs are graph nodes, not only leaves
    assert any(
        graph.nodes[src].kind not in ("bias", "pruned", "error") for n in skips for src in graph.incoming(n)
    )
    # the leaves' influences still add up to the target: float32 sums of terms that cancel, so the tolerance
    # scales with the terms' total size
    leaves = [
        node.influence for node in graph.nodes.values() if node.kind in ("embed", "error", "bias", "pruned")
    ]
    assert sum(leaves) == pytest.approx(graph.target_value, abs=1e-5 * sum(map(abs, leaves)))
