"""Splicing and evaluation metrics against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from interp import evals
from interp.evals import (
    NextTokenLosses,
    ReconstructionStats,
    bootstrap_intervals,
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


def _synthetic_contexts(n: int, rng: np.random.Generator, n_tokens: int = 127):
    """Per-context summed losses whose population ratio is known: per token, ablation costs d ~ U(0.5, 1.5) nats
    (mean 1.0) and the splice g ~ U(0, 0.4) (mean 0.2), each context's own; so CE recovered = (1.0 - 0.2) / 1.0
    = 0.8 and delta_ce = 0.2 in the population of contexts."""
    clean = (3.0 + rng.normal(0, 0.5, n)) * n_tokens
    ablated = clean + rng.uniform(0.5, 1.5, n) * n_tokens
    spliced = clean + rng.uniform(0.0, 0.4, n) * n_tokens
    return clean, spliced, ablated, n_tokens


def test_bootstrap_interval_covers_the_population_value_and_shrinks_with_contexts():
    """Over 200 independent samples the 95% interval covers the known ratio about 95% of the time (at least 90%:
    the binomial sd of 200 trials at 0.95 is 0.015), and quadrupling the contexts halves its width (1/sqrt(n))."""
    rng = np.random.default_rng(0)
    widths, covered = {}, {}
    for n in (32, 128):
        hits, w = 0, []
        for trial in range(200):
            iv = bootstrap_intervals(*_synthetic_contexts(n, rng), n_resamples=400, seed=trial)
            hits += iv["ce_recovered_lo"] <= 0.8 <= iv["ce_recovered_hi"]
            w.append(iv["ce_recovered_hi"] - iv["ce_recovered_lo"])
        covered[n], widths[n] = hits / 200, float(np.mean(w))
    assert covered[32] >= 0.9 and covered[128] >= 0.9, covered
    assert 0.4 < widths[128] / widths[32] < 0.6, widths
    iv = bootstrap_intervals(*_synthetic_contexts(512, rng))
    assert iv["delta_ce_lo"] < 0.2 < iv["delta_ce_hi"]
    assert (
        iv["ce_recovered_hi"] - iv["ce_recovered_lo"]
    ) / 2 < 0.02  # the goal's half-width, at 512 contexts


def test_bootstrap_is_seeded():
    data = _synthetic_contexts(40, np.random.default_rng(1))
    assert bootstrap_intervals(*data, seed=3) == bootstrap_intervals(*data, seed=3)
    assert bootstrap_intervals(*data, seed=3) != bootstrap_intervals(*data, seed=4)


def _partial_transcoder(tc: Transcoder, mean: Tensor, alpha: float) -> Transcoder:
    """alpha x the exact transcoder of relu_mlp_model + (1 - alpha) x the mean: between mean ablation (0) and the
    real MLP (1), so it recovers part of the loss."""
    out = Transcoder(tc.cfg)
    out.load_state_dict(tc.state_dict())
    with torch.no_grad():
        out.W_dec.mul_(alpha)
        out.b_dec.copy_(alpha * tc.b_dec + (1 - alpha) * mean)
    return out


def test_interval_on_the_toy_model_covers_the_whole_pool_and_shrinks(relu_mlp_model):
    """Toy ground truth: CE recovered over a pool of 96 contexts. Intervals from disjoint sub-samples of 24 cover
    it, and the interval over 48 contexts is narrower than over 12."""
    model, exact = relu_mlp_model
    pool = _tokens(n_ctx=96, ctx_len=24, seed=5)
    means = {LAYER: _mean_y(model, pool, LAYER)}
    tc = _partial_transcoder(exact, means[LAYER], 0.5)
    truth = evaluate_each(model, {LAYER: tc}, pool, means, batch_size=24)[LAYER]["ce_recovered"]
    assert 0.1 < truth < 0.95  # a partial recovery, so the interval has something to measure
    for part in range(4):
        m = evaluate_each(model, {LAYER: tc}, pool[part * 24 : (part + 1) * 24], means, batch_size=24)[LAYER]
        assert m["ce_recovered_lo"] <= truth <= m["ce_recovered_hi"], (part, truth, m)
        assert m["ce_recovered_lo"] <= m["ce_recovered"] <= m["ce_recovered_hi"]
        assert m["n_eval_contexts"] == 24
    width = {}
    for n in (12, 48):
        m = evaluate_each(model, {LAYER: tc}, pool[:n], means, batch_size=12)[LAYER]
        width[n] = m["ce_recovered_hi"] - m["ce_recovered_lo"]
    assert width[48] < 0.75 * width[12], width


def test_known_ablated_losses_skip_the_ablated_passes(relu_mlp_model, monkeypatch):
    """Given a layer's per-context ablated losses from an earlier evaluation, evaluate_each runs no mean-ablated
    pass for it and gives the same metrics."""
    model, exact = relu_mlp_model
    tokens = _tokens(n_ctx=8, ctx_len=16)
    means = {LAYER: _mean_y(model, tokens, LAYER)}
    calls = []
    real = evals.mean_ablated
    monkeypatch.setattr(evals, "mean_ablated", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = evaluate_each(model, {LAYER: exact}, tokens, means, batch_size=4)[LAYER]
    assert len(calls) == 2  # one per batch
    other = _partial_transcoder(exact, means[LAYER], 0.5)
    again = evaluate_each(
        model, {LAYER: other}, tokens, means, batch_size=4, ablated={LAYER: first["ablated_per_context"]}
    )[LAYER]
    assert len(calls) == 2  # none more
    fresh = evaluate_each(model, {LAYER: other}, tokens, means, batch_size=4)[LAYER]
    for key in ("ce_ablated", "ce_recovered", "ce_recovered_lo", "ce_recovered_hi", "delta_ce_lo"):
        assert again[key] == pytest.approx(fresh[key], rel=1e-9), key
    with pytest.raises(ValueError, match="shape"):
        evaluate_each(model, {LAYER: other}, tokens, means, ablated={LAYER: torch.zeros(3)})
