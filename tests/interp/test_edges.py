"""feature_edges against a dense recomputation, GQA head mapping against the model's own attention output, and
the blockwise memory bound."""

from __future__ import annotations

import pytest
import torch

from interp import edges
from interp.edges import feature_edges, ov_weights, top_upstream
from interp.transcoder import Transcoder, TranscoderConfig


def make_transcoders(layers: list[int], d_model: int, d_sae: int, seed: int = 0) -> dict[int, Transcoder]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in layers:
        tc = Transcoder(
            TranscoderConfig(
                d_in=d_model, d_sae=d_sae, d_out=d_model, architecture="relu", skip=False, layer=layer
            )
        )
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d_model, d_sae, generator=g) / d_model**0.5)
            tc.W_dec.copy_(torch.randn(d_sae, d_model, generator=g) / d_model**0.5)
        out[layer] = tc
    return out


def dense_top(score_blocks: list[tuple[int, torch.Tensor]], k: int):
    """Reference: the full [n_src_total, d_sae_dst] matrix, then top-k by |w| per column."""
    full = torch.cat([s for _, s in score_blocks])  # [n_src_total, d_dst]
    layer = torch.cat([torch.full((s.shape[0],), layer) for layer, s in score_blocks])
    feat = torch.cat([torch.arange(s.shape[0]) for _, s in score_blocks])
    top = full.abs().topk(k, dim=0).indices.T  # [d_dst, k]
    return layer[top], feat[top], full.gather(0, top.T).T


def test_ov_weights_expand_gqa_heads_like_the_model(tiny_model):
    """Σ_h pattern · x1 W_V[h] W_O[h] with the expanded W_V reproduces the model's attention output exactly."""
    W_V, W_O = ov_weights(tiny_model)
    assert W_V.shape[:2] == W_O.shape[:2] == (tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    _, cache = tiny_model.run_with_cache(torch.tensor([[1, 10, 20, 30, 40, 50, 60]]))
    for m in range(tiny_model.cfg.n_layers):
        x1 = cache[f"blocks.{m}.ln1.hook_normalized"][0]  # [pos, d_model]
        pattern = cache[f"blocks.{m}.attn.hook_pattern"][0]  # [H, pos, pos]
        out = torch.einsum("hts,sd,hde,hef->tf", pattern, x1, W_V[m], W_O[m])
        torch.testing.assert_close(out, cache[f"blocks.{m}.hook_attn_out"][0], atol=1e-6, rtol=1e-4)
    # swapping the head->kv-head mapping (a common GQA bug) must not also pass
    wrong = tiny_model.W_V[0].repeat(W_O.shape[1] // tiny_model.W_V.shape[1], 1, 1)
    assert not torch.allclose(wrong, W_V[0])


@pytest.mark.parametrize("block", [7, 64])
def test_feature_edges_match_dense_topk(block):
    d_model, d_sae, n_heads, d_head, k = 16, 40, 4, 4, 5
    tcs = make_transcoders([0, 1, 3], d_model, d_sae)
    g = torch.Generator().manual_seed(1)
    W_V = torch.randn(4, n_heads, d_model, d_head, generator=g)
    W_O = torch.randn(4, n_heads, d_head, d_model, generator=g)
    got = {(e.dst_layer, e.via): e for e in feature_edges(tcs, W_V, W_O, k=k, block=block)}
    # dst 1: resid + heads of layer 1; dst 3: resid + heads of layers 1..3
    assert set(got) == {(1, "resid")} | {(1, f"attn.1.{h}") for h in range(4)} | {(3, "resid")} | {
        (3, f"attn.{m}.{h}") for m in (1, 2, 3) for h in range(4)
    }
    for (dst, via), e in got.items():
        if via == "resid":
            blocks = [(src, tcs[src].W_dec @ tcs[dst].W_enc) for src in (0, 1) if src < dst]
        else:
            m, h = map(int, via.split(".")[1:])
            ov = W_V[m, h] @ W_O[m, h]  # [d_model, d_model]
            blocks = [(src, tcs[src].W_dec @ ov @ tcs[dst].W_enc) for src in (0, 1) if src < m]
        layer, feat, weight = dense_top(blocks, k)
        torch.testing.assert_close(e.weight, weight, atol=1e-5, rtol=1e-5)
        assert torch.equal(e.src_layer, layer) and torch.equal(e.src_feature, feat)
        assert (e.weight.abs()[:, :-1] >= e.weight.abs()[:, 1:]).all()


def test_feature_edges_never_materialize_more_than_a_block(monkeypatch):
    """The score matrices handed to the top-k merge stay block x block even when d_sae is 10x the block."""
    seen = []
    real = edges._merge_topk

    def spy(best_w, best_i, scores, offset, k):
        seen.append(tuple(scores.shape))
        return real(best_w, best_i, scores, offset, k)

    monkeypatch.setattr(edges, "_merge_topk", spy)
    tcs = make_transcoders([0, 2], d_model=8, d_sae=320)
    W_V, W_O = torch.randn(3, 2, 8, 4), torch.randn(3, 2, 4, 8)
    out = list(feature_edges(tcs, W_V, W_O, k=3, block=32))
    assert seen and max(a for a, _ in seen) <= 32 and max(b for _, b in seen) <= 32
    assert all(e.weight.shape == (320, 3) for e in out)


def test_top_upstream_k_larger_than_sources_keeps_all():
    left = [(0, torch.randn(3, 4))]
    right = torch.randn(4, 5)
    layer, feat, w = top_upstream(left, right, k=10, block=2)
    assert w.shape == (5, 3)
    torch.testing.assert_close(w.abs().sort(dim=1).values, (left[0][1] @ right).T.abs().sort(dim=1).values)


def test_max_gap_keeps_only_nearby_upstream_layers():
    from interp.edges import upstream, vias

    assert upstream(5, [0, 2, 3, 4, 5, 6], max_gap=2) == [3, 4]
    assert upstream(5, [0, 2, 3, 4, 5, 6]) == [0, 2, 3, 4]
    heads = {m for _, m, _ in vias(5, [0, 3, 4], heads=True, n_heads=2, max_gap=2) if m is not None}
    assert heads == {4, 5}  # from layer 3 on: its attention successors up to the MLP of layer 5
    assert vias(5, [0, 1], heads=True, n_heads=2, max_gap=2) == []  # nothing close enough
