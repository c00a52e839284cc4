"""Splicing and evaluation metrics against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.evals import (
    NextTokenLosses,
    ReconstructionStats,
    evaluate,
    evaluate_each,
    evaluate_layer,
    logits_from,
    spliced,
)
from interp.model import load_model, mlp_hooks
from interp.transcoder import Transcoder, TranscoderConfig
from tests.conftest import make_tiny_checkpoint

LAYER = 1


@pytest.fixture(scope="module")
def relu_mlp_model(tmp_path_factory):
    """A tiny Llama whose layer-1 MLP is exactly a ReLU transcoder: up_proj = 0 with bias 1, so
    mlp(x) = down(ReLU(gate(x)) * 1), and the RMSNorm weights are 1 (x = the normalized input)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    base = make_tiny_checkpoint(str(tmp_path_factory.mktemp("base")))
    cfg = LlamaConfig.from_pretrained(base)
    cfg.hidden_act, cfg.mlp_bias = "relu", True
    torch.manual_seed(1)
    hf = LlamaForCausalLM(cfg).eval()
    mlp = hf.model.layers[LAYER].mlp
    with torch.no_grad():
        mlp.up_proj.weight.zero_()
        mlp.up_proj.bias.fill_(1.0)
        for b in (mlp.gate_proj.bias, mlp.down_proj.bias):
            b.normal_(0, 0.5)
        hf.model.embed_tokens.weight.mul_(50)  # tied unembedding: confident predictions
        mlp.down_proj.weight.mul_(200)  # an MLP output as large as the residual stream: it matters
    out = str(tmp_path_factory.mktemp("relu_mlp"))
    hf.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    model = load_model(out, device="cpu")
    tc = Transcoder(
        TranscoderConfig(
            d_in=cfg.hidden_size,
            d_sae=cfg.intermediate_size,
            d_out=cfg.hidden_size,
            architecture="relu",
            skip=False,
        )
    )
    with torch.no_grad():
        tc.W_enc.copy_(mlp.gate_proj.weight.T)
        tc.b_enc.copy_(mlp.gate_proj.bias)
        tc.W_dec.copy_(mlp.down_proj.weight.T)
        tc.b_dec.copy_(mlp.down_proj.bias)
    return model, tc


def _tokens(n_ctx=6, ctx_len=24, vocab=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(3, vocab, (n_ctx, ctx_len), generator=g)
    t[:, 0] = 1  # BOS
    return t


def _mean_y(model, tokens, layer):
    _, cache = model.run_with_cache(tokens, names_filter=mlp_hooks(layer)[1])
    return cache[mlp_hooks(layer)[1]][:, 1:].flatten(0, 1).mean(0)


def test_transcoder_equal_to_mlp_recovers_everything(relu_mlp_model):
    model, tc = relu_mlp_model
    tokens = _tokens()
    m = evaluate_layer(model, tc, LAYER, tokens, _mean_y(model, tokens, LAYER), batch_size=4)
    assert m["fvu"] < 1e-8
    assert abs(m["ce_spliced"] - m["ce_clean"]) < 1e-4
    assert m["kl"] < 1e-5
    assert abs(m["ce_ablated"] - m["ce_clean"]) > 0.05  # the MLP matters, so ce_recovered is meaningful
    assert m["ce_recovered"] == pytest.approx(1.0, abs=1e-3)


def test_all_zero_transcoder_equals_zero_ablation(tiny_model):
    d = tiny_model.cfg.d_model
    tc = Transcoder(TranscoderConfig(d_in=d, d_sae=4 * d, d_out=d, architecture="relu", skip=False))
    with torch.no_grad():
        tc.W_dec.zero_()
    tokens = _tokens()
    mean = _mean_y(tiny_model, tokens, LAYER)
    m = evaluate_layer(tiny_model, tc, LAYER, tokens, mean, batch_size=4)
    assert m["ce_spliced"] == pytest.approx(m["ce_zero_ablated"], abs=1e-5)
    assert m["ce_spliced"] != pytest.approx(m["ce_clean"], abs=1e-4)
    with torch.no_grad():
        tc.b_dec.copy_(mean)  # a constant-mean transcoder is mean ablation: nothing recovered
    m = evaluate_layer(tiny_model, tc, LAYER, tokens, mean, batch_size=4)
    assert m["ce_spliced"] == pytest.approx(m["ce_ablated"], abs=1e-5)
    assert m["ce_recovered"] == pytest.approx(0.0, abs=1e-3)


def test_splicing_several_layers_matches_manual_hooks(tiny_model):
    """`spliced` with two layers equals hooking both MLP outputs by hand (x read in the same forward pass;
    position 0, BOS, keeps the real MLP output)."""
    d = tiny_model.cfg.d_model
    torch.manual_seed(0)
    tcs = {layer: Transcoder(TranscoderConfig(d, 64, d, architecture="relu", skip=False)) for layer in (0, 2)}
    tokens = _tokens(n_ctx=2)
    with spliced(tiny_model, tcs):
        got = tiny_model(tokens)
    xs = {}
    hooks = []
    for layer, tc in tcs.items():
        hooks.append((mlp_hooks(layer)[0], lambda a, hook, layer=layer: xs.__setitem__(layer, a.clone())))
        hooks.append(
            (
                mlp_hooks(layer)[1],
                lambda a, hook, layer=layer, tc=tc: torch.cat([a[:, :1], tc(xs[layer])[:, 1:]], 1),
            )
        )
    want = tiny_model.run_with_hooks(tokens, fwd_hooks=hooks)
    clean = tiny_model(tokens)
    torch.testing.assert_close(got, want)
    assert (got - clean).abs().max() > 1e-3
    res = evaluate(tiny_model, tcs, tokens, {layer: torch.zeros(d) for layer in tcs}, zero_ablation=False)
    assert set(res["layers"]) == {0, 2} and res["kl"] > 0


def test_reconstruction_stats_match_direct_computation():
    torch.manual_seed(0)
    tc = Transcoder(TranscoderConfig(d_in=8, d_sae=32, d_out=6, architecture="topk", k=3, skip=False))
    with torch.no_grad():
        tc.b_enc.normal_()
        tc.b_enc[:5] = -100.0  # features 0..4 never fire
        tc.b_enc[5] = 100.0  # feature 5 always fires (dense)
    x, y = torch.randn(50, 8), torch.randn(50, 6)
    s = ReconstructionStats(32)
    s.update(tc, x[:20], y[:20])
    s.update(tc, x[20:], y[20:])
    r = s.result()
    z = tc.encode(x).detach().numpy()
    err = ((y - tc(x)).detach().numpy() ** 2).sum()
    var = ((y.numpy() - y.numpy().mean(0)) ** 2).sum()
    assert r["fvu"] == pytest.approx(err / var, rel=1e-6)
    assert r["mse"] == pytest.approx(err / 50, rel=1e-6)
    assert r["l0"] == pytest.approx((z > 0).sum(1).mean())
    assert r["dead_frac"] == pytest.approx(((z > 0).sum(0) == 0).mean())
    assert r["dense_frac"] == pytest.approx(((z > 0).mean(0) > 0.1).mean())
    assert r["dead_frac"] >= 5 / 32 and r["dense_frac"] >= 1 / 32
    assert np.isclose(r["l0"], 3.0) or r["l0"] < 3.0


def test_typical_fvu_leaves_out_the_massive_tokens():
    torch.manual_seed(0)
    tc = Transcoder(TranscoderConfig(d_in=8, d_sae=32, d_out=6, architecture="topk", k=3, skip=False))
    x, y = torch.randn(60, 8), torch.randn(60, 6)
    y[:3] *= 100.0  # three massive tokens
    center = torch.zeros(6)
    s = ReconstructionStats(32, massive=(center, 10.0))
    s.update(tc, x[:25], y[:25])
    s.update(tc, x[25:], y[25:])
    r = s.result()
    keep = y.norm(dim=-1) <= 10.0
    assert keep.sum() == 57
    # the errors as the stats form them: float32 predictions of the same two batches (a matmul over all 60 rows
    # rounds differently), subtracted from y in float64
    y_hat = torch.cat([tc(x[:25]), tc(x[25:])]).detach().double()
    yt, err = y[keep].double(), (y.double() - y_hat)[keep]
    want = err.pow(2).sum() / (yt - yt.mean(0)).pow(2).sum()
    # float64 sums of the same terms in another order: rounding ~1e-15 relative
    assert r["fvu_typical"] == pytest.approx(float(want), rel=1e-9)
    assert r["massive_frac"] == pytest.approx(3 / 60, abs=1e-12)
    everything = ReconstructionStats(32, massive=(center, float("inf")))
    everything.update(tc, x, y)
    assert everything.result()["fvu_typical"] == pytest.approx(r["fvu"], rel=1e-9)


def test_each_layer_alone_equals_evaluating_it_alone(tiny_model):
    tokens = _tokens(n_ctx=4, ctx_len=16)
    d = tiny_model.cfg.d_model
    tcs, means = {}, {}
    for layer in (0, 2):
        torch.manual_seed(layer)
        tcs[layer] = Transcoder(
            TranscoderConfig(d_in=d, d_sae=64, d_out=d, architecture="topk", k=4, skip=False)
        )
        means[layer] = _mean_y(tiny_model, tokens, layer)
    each = evaluate_each(tiny_model, tcs, tokens, means, batch_size=2)
    for layer, tc in tcs.items():
        alone = evaluate_layer(tiny_model, tc, layer, tokens, means[layer], batch_size=2, zero_ablation=False)
        for key in ("ce_clean", "ce_spliced", "ce_ablated", "ce_recovered", "kl", "fvu", "l0", "dead_frac"):
            # the same forward passes in the same batches: equal up to float32 summation of the losses
            assert each[layer][key] == pytest.approx(alone[key], rel=1e-5, abs=1e-7), (layer, key)
    assert each[0]["ce_spliced"] != pytest.approx(each[2]["ce_spliced"], rel=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_pass_started_at_a_block_equals_the_whole_pass(tmp_path, arch):
    """Llama resumes from a block's input (and a splice hook on that block still fires); GPT-2, whose forward adds
    positions to the embeddings, must not, so it runs whole and gives the same logits too."""
    model = load_model(make_tiny_checkpoint(str(tmp_path / arch), arch=arch), device="cpu")
    tokens = _tokens(n_ctx=2, ctx_len=12)
    d = model.cfg.d_model
    torch.manual_seed(0)
    tc = Transcoder(TranscoderConfig(d_in=d, d_sae=32, d_out=d, architecture="topk", k=4, skip=False))
    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens)
        for layer in range(3):
            resid = cache[f"blocks.{layer}.hook_resid_pre"]
            # exact: the same operations on the same inputs, only the blocks before `layer` are skipped
            assert torch.equal(logits_from(model, tokens, resid, layer), clean)
            with spliced(model, {layer: tc}):
                want = model(tokens)
                got = logits_from(model, tokens, resid, layer)
            assert torch.equal(got, want) and not torch.equal(got, clean)


def test_next_token_losses_equal_log_softmax_in_float64():
    """nll and KL from logsumexp and one p.l product equal the textbook log-softmax formulas (float64 reference).
    Tolerance: float32 sums over a 64-token vocabulary of logits up to ~15 in size round by at most
    64 * eps32 * 15 ~ 1e-4."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (3, 9), generator=g)
    clean_logits, other_logits = (4 * torch.randn(3, 9, 64, generator=g) for _ in range(2))
    clean = NextTokenLosses(clean_logits, tokens, keep_distribution=True)
    other = NextTokenLosses(other_logits, tokens, clean)
    logp_c = torch.log_softmax(clean_logits[:, :-1].double(), -1)
    logp_o = torch.log_softmax(other_logits[:, :-1].double(), -1)
    nll_ref = -logp_o.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    kl_ref = (logp_c.exp() * (logp_c - logp_o)).sum(-1)
    torch.testing.assert_close(other.nll.double(), nll_ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(other.kl.double(), kl_ref, atol=1e-4, rtol=0)
    assert kl_ref.min() > 0.01  # the distributions differ, so a wrong formula could not pass by accident
    torch.testing.assert_close(
        NextTokenLosses(clean_logits, tokens, clean).kl, torch.zeros(3, 8), atol=1e-4, rtol=0
    )
