"""Exact attribution (interp.attribution.exact) against ground truth: every adjacency entry equals the change of
its row's value when its source is ablated in the frozen local replacement model (patterns and norm scales
frozen, MLP outputs frozen except the transcoders' skip paths, which stay live), on GPT-2-, Llama- and
NeoX-shaped toy models; each row's books balance; a capped graph's rows are the uncapped graph's entries."""

from __future__ import annotations

import warnings

import pytest
import torch

from interp.attribution import FeatureTarget, LogitTarget, PromptCache
from interp.attribution.exact import (
    attribute_exact,
    exact_graph,
    influence,
    prune_masks,
    scores,
    signed_influence,
)
from interp.attribution.prune import graph_scores
from interp.model import load_model
from interp.transcoder import Transcoder, TranscoderConfig
from tests.conftest import make_tiny_checkpoint

TOKENS = [1, 10, 11, 12, 13, 14, 15, 16]


def toy_transcoders(model, seed: int = 0, skip: bool = True) -> dict[int, Transcoder]:
    """Seeded TopK transcoders on every layer, with nonzero biases, input centering and skip weights."""
    gen = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    out = {}
    for layer in range(model.cfg.n_layers):
        cfg = TranscoderConfig(d_in=d, d_out=d, d_sae=48, k=6, layer=layer, skip=skip, architecture="topk")
        tc = Transcoder(cfg)
        tc.reset_parameters(gen)
        with torch.no_grad():
            for p in (tc.b_enc, tc.b_dec, tc.b_pre):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            if skip:
                tc.W_skip.copy_(torch.randn(tc.W_skip.shape, generator=gen) * 0.05)
        out[layer] = tc
    return out


@pytest.fixture(scope="module", params=["llama", "gpt2", "neox"])
def toy(request, tmp_path_factory):
    path = make_tiny_checkpoint(str(tmp_path_factory.mktemp(request.param)), arch=request.param)
    model = load_model(path, device="cpu")
    tcs = toy_transcoders(model)
    tokens = torch.tensor(TOKENS)
    return model, tcs, tokens, PromptCache(model, tokens, tcs)


def frozen_ablation(model, tokens, tcs, pc, read, removals) -> torch.Tensor:
    """Change of `read(captured)` when each removal (hook name, position, vector) is subtracted from that hook's
    output, in the frozen local replacement model (see top). [len(removals)]"""
    n = model.cfg.n_layers
    _, cache = model.run_with_cache(tokens[None])
    frozen = [name for name in cache if name.endswith(("hook_pattern", "hook_scale"))]
    batch = len(removals) + 1  # row 0: clean
    delta: dict[str, torch.Tensor] = {}
    for row, (name, position, vector) in enumerate(removals, start=1):
        delta.setdefault(name, torch.zeros(batch, len(tokens), model.cfg.d_model))[row, position] = vector
    captured: dict[str, torch.Tensor] = {}

    def hook(act, hook):
        name = hook.name
        if name in frozen:
            return cache[name].expand_as(act)
        if name.endswith("ln2.hook_normalized"):
            captured[name] = act
        if name.endswith("hook_mlp_out"):
            layer = int(name.split(".")[1])
            x, clean_x = (
                captured[f"blocks.{layer}.ln2.hook_normalized"],
                cache[f"blocks.{layer}.ln2.hook_normalized"],
            )
            act = cache[name].expand_as(act).clone()
            if tcs[layer].W_skip is not None:  # the skip path stays live
                act = act - tcs[layer].skip_out(clean_x) + tcs[layer].skip_out(x)
        return act - delta[name] if name in delta else act

    names = set(frozen) | {"hook_embed"}
    names |= {f"blocks.{layer}.{h}" for layer in range(n) for h in ("ln2.hook_normalized", "hook_mlp_out")}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A forward hook edited hook_scale")
        logits = model.run_with_hooks(
            tokens[None].expand(batch, -1), fwd_hooks=[(name, hook) for name in sorted(names)]
        )
    value = read(logits, captured)
    return value[1:] - value[0]


def sources(g, pc, n_features: int = 12):
    """(column index, removal) for a spread of feature, error and token columns of the dense graph."""
    out = []
    step = max(1, g.n_features // n_features)
    for col in range(0, g.n_features, step):
        layer, t, i = g.features[col].tolist()
        out.append(
            (col, (f"blocks.{layer}.hook_mlp_out", t, g.activations[col] * pc.transcoders[layer].W_dec[i]))
        )
    for layer in range(g.n_layers):
        for t in (1, g.n_pos - 1):
            col = g.error_slice.start + layer * g.n_pos + t
            error = pc.mlp_out[layer, t] - pc.y_hat[layer][t]
            out.append((col, (f"blocks.{layer}.hook_mlp_out", t, error)))
    for t in range(g.n_pos):
        out.append((g.token_slice.start + t, ("hook_embed", t, pc.token_embed[t])))
    return out


def test_exact_adjacency_equals_ablations_in_the_frozen_model(toy):
    model, tcs, tokens, pc = toy
    target = LogitTarget(20, 21)
    g = exact_graph(pc, target, max_feature_nodes=None)
    cols, removals = zip(*sources(g, pc))

    def logit_diff(logits, captured):
        return logits[:, -1, 20] - logits[:, -1, 21]

    actual = frozen_ablation(model, tokens, tcs, pc, logit_diff, removals)
    predicted = -g.adjacency[-1, list(cols)]
    scale = g.adjacency[-1].abs().max()
    assert (actual - predicted).abs().max() <= 1e-4 * scale, (actual, predicted)
    assert predicted.abs().max() > 1e-3 * scale  # the sources checked do move the target
    # a feature row: the most upstream-fed feature of the top layer
    top = int(torch.nonzero(g.features[:, 0] == model.cfg.n_layers - 1)[0])
    layer, t, i = g.features[top].tolist()
    tc = tcs[layer]

    def pre_activation(logits, captured):
        x = captured[f"blocks.{layer}.ln2.hook_normalized"][:, t]
        return (x - tc.b_pre) @ tc.W_enc[:, i] + tc.b_enc[i]

    below = [(c, r) for c, r in zip(cols, removals) if not r[0].startswith(f"blocks.{layer}.")]
    below = [(c, r) for c, r in below if c >= g.n_features or g.features[c, 0] < layer]
    cols, removals = zip(*below)
    actual = frozen_ablation(model, tokens, tcs, pc, pre_activation, removals)
    predicted = -g.adjacency[top, list(cols)]
    assert (actual - predicted).abs().max() <= 1e-4 * g.adjacency[top].abs().max()


def test_exact_rows_balance_and_a_wrong_skip_breaks_them(toy):
    """Each row's entries, the left-out features and its constants sum to its value, computed independently
    (encoder on the cached input; logits). Perturbing one skip path after caching breaks it."""
    model, tcs, tokens, pc = toy
    for target in (LogitTarget(20), FeatureTarget(model.cfg.n_layers - 1, 3, -1)):
        if isinstance(target, FeatureTarget):
            active = int(pc.active_index[target.layer][-1, 0])
            target = FeatureTarget(target.layer, active, -1)
        g = exact_graph(pc, target, max_feature_nodes=None)
        rows = g.row_nodes()
        total = g.adjacency[rows].sum(1) + g.left_out + g.constants
        magnitude = g.adjacency[rows].abs().sum(1) + g.constants.abs() + g.values.abs()
        assert ((total - g.values).abs() / magnitude).max() < 1e-5
    broken = PromptCache(model, tokens, tcs)
    tcs[0].W_skip.data[0, 0] += 1.0  # the sweep now passes through a skip the cache did not run
    try:
        g = exact_graph(broken, LogitTarget(20), max_feature_nodes=None)
    finally:
        tcs[0].W_skip.data[0, 0] -= 1.0
    rows = g.row_nodes()
    total = g.adjacency[rows].sum(1) + g.left_out + g.constants
    magnitude = g.adjacency[rows].abs().sum(1) + g.constants.abs() + g.values.abs()
    assert ((total - g.values).abs() / magnitude).max() > 1e-3


def test_a_capped_graph_keeps_the_most_influential_features_with_the_same_entries(toy):
    model, tcs, tokens, pc = toy
    full = exact_graph(pc, LogitTarget(20, 21), max_feature_nodes=None)
    capped = exact_graph(pc, LogitTarget(20, 21), max_feature_nodes=10, batch_size=4, update_interval=1)
    assert capped.n_features == 10 and full.n_features > 10
    index = {tuple(f): n for n, f in enumerate(full.features.tolist())}
    picked = [index[tuple(f)] for f in capped.features.tolist()]
    rest = torch.arange(full.n_features, len(full.adjacency))  # errors, tokens, target
    columns = torch.cat([torch.tensor(picked), rest[:-1]])
    rows = torch.cat([torch.tensor(picked), rest[-1:]])
    assert torch.allclose(
        capped.adjacency[capped.row_nodes(), :-1], full.adjacency[rows][:, columns], atol=1e-5
    )
    # every row's total over all columns is the same; the capped graph's share of it from rowless features
    # is its left-out part
    capped_total = capped.adjacency[capped.row_nodes()].sum(1) + capped.left_out
    assert not full.left_out.any()  # uncapped: every active feature has a row
    assert torch.allclose(capped_total, full.adjacency[rows].sum(1), atol=1e-4)
    assert capped.left_out.abs().sum() > 0
    # the target's direct inputs among features: the capped set holds the strongest few
    direct = full.adjacency[-1, : full.n_features].abs()
    assert int(direct.argmax()) in picked


def test_dense_scores_equal_the_graph_definitions(toy):
    """scores() on the dense matrix equals interp.attribution.prune.graph_scores on the same graph as nodes and
    edges (every node and edge kept); signed influence equals the node/edge version too."""
    model, tcs, tokens, pc = toy
    target = LogitTarget(20, 21)
    g = exact_graph(pc, target, max_feature_nodes=None)
    keep, edges, _ = prune_masks(g, 1.0, 1.0)
    assert keep.float().mean() > 0.5
    graph = attribute_exact(model, tokens, tcs, target, max_feature_nodes=None, node_threshold=1.0,
                            edge_threshold=1.0, cache=pc)  # fmt: skip
    dense = scores(g)
    assert graph.scores == dense
    on_nodes = graph_scores(graph)
    assert on_nodes["replacement_score"] == pytest.approx(dense["replacement_score"], abs=2e-3)
    assert on_nodes["completeness_score"] == pytest.approx(dense["completeness_score"], abs=2e-3)
    infl = influence(
        g.adjacency, torch.nn.functional.one_hot(torch.tensor(len(g.adjacency) - 1), len(g.adjacency)).float()
    )
    assert infl[g.token_slice].sum() > 0 and infl[-1] == 0
    signed = signed_influence(g)
    # the leaves' signed influences and the rows' constants and left-out parts sum to the target's value
    rows = g.row_nodes()
    mult = torch.zeros(len(g.adjacency))
    mult[rows] = signed[rows] / g.values
    terms = torch.cat([signed[g.error_slice], signed[g.token_slice], mult[rows] * (g.constants + g.left_out)])
    assert abs(float(terms.sum() - g.values[-1])) <= 1e-5 * float(terms.abs().sum())


def test_the_pruned_graph_balances_and_keeps_the_target_and_tokens(toy):
    model, tcs, tokens, pc = toy
    graph = attribute_exact(model, tokens, tcs, LogitTarget(20, 21), max_feature_nodes=None, cache=pc)
    assert graph.config["method"] == "exact"
    kinds = {node.kind for node in graph.nodes.values()}
    assert {"target", "embed", "feature"} <= kinds
    assert sum(node.kind == "embed" for node in graph.nodes.values()) == len(tokens)
    for node_id, node in graph.nodes.items():
        if node.kind in ("target", "feature"):
            incoming = graph.incoming(node_id)
            scale = max(abs(node.activation), sum(abs(w) for w in incoming.values()))
            assert abs(sum(incoming.values()) - node.activation) <= 1e-5 * scale, node_id


def test_bad_settings_are_refused(toy):
    _, _, _, pc = toy
    with pytest.raises(ValueError, match="batch_size"):
        exact_graph(pc, LogitTarget(20), batch_size=0)
    with pytest.raises(ValueError, match="node_threshold"):
        prune_masks(exact_graph(pc, LogitTarget(20), max_feature_nodes=5), node_threshold=1.5)
