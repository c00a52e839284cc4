"""The circuit math on the other architectures users point the atlas at: GPT-2 (LayerNorm with biases, attention
biases, learned positions) and Pythia / GPT-NeoX (attention and MLP in parallel: MLP l reads the block input, not
attention layer l's output). Checked against the running model: exact decompositions and real ablations."""

from __future__ import annotations

import pytest
import torch

from interp.ablation import ablation_effects
from interp.attribution import (
    FeatureTarget,
    LogitTarget,
    PromptCache,
    attribute,
    decompose,
    decompose_many,
    direct_effects,
)
from interp.edges import vias
from interp.model import load_model, parallel_blocks
from tests.conftest import make_tiny_checkpoint
from tests.interp.test_attribution import TOKENS, check_bookkeeping
from tests.interp.test_edges import make_transcoders

D_MODEL = 32


@pytest.fixture(scope="module", params=["gpt2", "neox"])
def arch_model(request, tmp_path_factory):
    path = make_tiny_checkpoint(str(tmp_path_factory.mktemp(request.param)), arch=request.param)
    model = load_model(path, device="cpu")
    tcs = make_transcoders([0, 2], D_MODEL, d_sae=48, seed=3)
    with torch.no_grad():
        for tc in tcs.values():
            tc.b_enc.fill_(-0.3)
            tc.W_dec.mul_(0.05)
    return request.param, model, tcs


def test_parallel_blocks_are_detected(arch_model):
    arch, model, _ = arch_model
    assert parallel_blocks(model) == (arch == "neox")
    # which attention layers feed MLP 2 directly: 1 and 2 in sequential blocks, only 1 in parallel ones
    heads = {m for _, m, _ in vias(2, [0, 2], True, 4, parallel_blocks(model)) if m is not None}
    assert heads == ({1} if arch == "neox" else {1, 2})


def test_decomposition_and_direct_effects_are_exact_at_every_stage(arch_model):
    _, model, tcs = arch_model
    pc = PromptCache(model, TOKENS, tcs)
    assert float(pc.attn_bias.abs().max()) > 0.1  # bias terms are exercised
    scale = float(pc.resid.abs().max())
    g = torch.Generator().manual_seed(0)
    for stage in range(2 * model.cfg.n_layers + 1):
        w = torch.randn(D_MODEL, generator=g)
        value = float(pc.resid[stage, 7] @ w)
        assert decompose(pc, stage, 7, w).total() == pytest.approx(value, rel=1e-4, abs=1e-6 * scale)
        light = decompose_many(pc, [stage], [7], w[None], heads=False)[0]  # the heads' terms as one sum
        assert light.total() == pytest.approx(value, rel=1e-4, abs=1e-6 * scale)
        assert direct_effects(pc, stage, 7, w).total() == pytest.approx(value, rel=1e-4, abs=1e-6 * scale)


@pytest.mark.parametrize("kind", ["feature", "logit"])
def test_direct_effects_equal_real_ablations(arch_model, kind):
    """Every active feature at every position, into a layer-2 feature (through attention layer 1, and in
    sequential blocks layer 2) or into a logit difference: exactly the change of a real zero-ablation with
    patterns, scales and the other MLP outputs frozen."""
    _, model, tcs = arch_model
    pc = PromptCache(model, TOKENS, tcs)
    t = len(TOKENS) - 1
    if kind == "feature":
        target = FeatureTarget(2, int(pc.z[2][t].argmax()), t)
    else:
        target = LogitTarget(token=25, other=30, position=t)
    e = direct_effects(pc, *pc.target_reader(target)[:3])
    ablations = [(layer, s, i) for layer, f in e.features.items() for s, i in f.nonzero().tolist()]
    assert len({s for _, s, _ in ablations}) == t
    measured = ablation_effects(model, TOKENS, tcs, target, ablations, freeze=("pattern", "scale", "mlp"))
    predicted = torch.tensor([-float(e.features[layer][s, i]) for layer, s, i in ablations])
    scale = float(predicted.abs().max())
    torch.testing.assert_close(measured, predicted, atol=1e-4 * scale, rtol=1e-3)


def test_graph_bookkeeping(arch_model):
    _, model, tcs = arch_model
    graph = attribute(model, TOKENS, tcs, LogitTarget(token=25, other=30), n_paths=40, n_steps=3)
    assert check_bookkeeping(graph) > 5
    assert any(n.kind == "feature" for n in graph.nodes.values())
