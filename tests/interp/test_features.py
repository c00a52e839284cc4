"""The streaming miner against brute-force recomputation on small random data."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from interp.features import (
    HIST_BINS_PER_OCTAVE,
    MinerConfig,
    context_chunks,
    display_histogram,
    exact_examples,
    hist_bin,
    mine,
)

N_CTX, LENGTH, D_IN, D_SAE, VOCAB = 40, 12, 8, 10, 15


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(D_IN, D_SAE, generator=g)
    b = torch.linspace(-2.5, 0.5, D_SAE)  # rare to dense features

    def encode(x):
        return torch.relu(x @ w + b)

    x = torch.randn(N_CTX, LENGTH, D_IN, generator=g)
    tokens = torch.randint(0, VOCAB, (N_CTX, LENGTH), generator=g)
    context_ids = torch.arange(N_CTX) * 3 + 7  # sparse ids, like a held-out split
    # The miner and brute_z compute x @ w + b with different kernels and batch shapes, so they sum in different
    # orders. Two float32 sums of D_IN products differ by at most D_IN rounding steps of the largest partial sum:
    # |err| <= D_IN * eps * (|x| @ |w| + |b|). That bound, not a relative 1e-6, is the tolerance: a pre-activation
    # near 0.04 that cancels from terms of size ~1 already differs in its 6th digit between Intel and AMD kernels.
    atol = D_IN * torch.finfo(torch.float32).eps * float((x.half().float().abs() @ w.abs() + b.abs()).max())
    return encode, x, tokens, context_ids, atol


def batches(x, tokens, context_ids, first_pos=1, sizes=(37, 5, 101, 64)):
    """Rows of positions first_pos.. of every context, cut into uneven batches that split contexts."""
    pos = torch.arange(first_pos, LENGTH)
    rows = {
        "context_id": context_ids.repeat_interleave(len(pos)),
        "position": pos.repeat(len(context_ids)),
        "token_id": tokens[:, first_pos:].reshape(-1),
        "x": x[:, first_pos:].reshape(-1, D_IN).half(),  # shards are float16
    }
    out, i, j = [], 0, 0
    while i < len(rows["context_id"]):
        n = sizes[j % len(sizes)]
        out.append({k: v[i : i + n] for k, v in rows.items()})
        i, j = i + n, j + 1
    return out


def brute_z(encode, x):  # [N_CTX, LENGTH - 1, D_SAE] from the same float16 rounding as the shards
    return encode(x[:, 1:].half().float())


CFG = MinerConfig(
    n_top=6,
    examples_per_context=2,
    n_reservoir=50,
    per_band=50,
    n_bands=3,
    window=5,
    window_left=3,
    token_index_top=4,
    tokens_per_chunk=50,
)


@pytest.fixture(scope="module")
def stats(data):
    encode, x, tokens, context_ids, _ = data
    return mine(encode, D_SAE, batches(x, tokens, context_ids), CFG)


def test_statistics_match_brute_force(data, stats):
    encode, x, _, _, atol = data
    z = brute_z(encode, x).reshape(-1, D_SAE)
    active = z > 0
    assert stats.n_tokens == z.shape[0]
    assert torch.equal(stats.n_active, active.sum(0))
    torch.testing.assert_close(stats.max_act, z.max(0).values, rtol=0, atol=atol)
    mean = z.sum(0) / active.sum(0).clamp(min=1)
    torch.testing.assert_close(stats.mean_act, mean, rtol=1e-5, atol=atol)
    for f in range(D_SAE):
        vals = z[active[:, f], f]
        counts = torch.bincount(hist_bin(vals), minlength=stats.hist.shape[1])
        assert torch.equal(stats.hist[f], counts)
        ordered = vals.sort().values
        for q, est in zip(stats.quantile_levels, stats.quantiles[f]):
            true = ordered[math.ceil(q * len(vals)) - 1]  # the order statistic the estimate's bin must hold
            assert abs(math.log2(est / true)) <= 1 / HIST_BINS_PER_OCTAVE + 1e-6


def test_top_examples_match_brute_force(data, stats):
    encode, x, tokens, context_ids, atol = data
    z = brute_z(encode, x)  # [ctx, pos, d_sae]
    ex = stats.examples
    top = [i for i, k in enumerate(ex.kind) if k == "top"]
    for f in range(D_SAE):
        # brute force: the 2 best positions of every context, then the global best n_top
        vals = z[:, :, f].topk(2, dim=1).values.reshape(-1)
        expected = vals[vals > 0].sort(descending=True).values[: CFG.n_top]
        rows = [i for i in top if ex.feature[i] == f]
        got = ex.activation[rows]
        assert [int(ex.rank[i]) for i in rows] == list(range(len(rows)))
        torch.testing.assert_close(got, expected, rtol=0, atol=atol)
    for i in range(len(ex.kind)):  # every example's payload is where it says it is
        c = int((context_ids == ex.context_id[i]).nonzero())
        p, s, f = int(ex.position[i]), int(ex.window_start[i]), int(ex.feature[i])
        assert float(ex.activation[i]) == pytest.approx(float(z[c, p - 1, f]), rel=0, abs=atol)
        assert int(ex.token_id[i]) == int(tokens[c, p])
        assert 1 <= s <= p < s + CFG.window and s + CFG.window <= LENGTH
        torch.testing.assert_close(ex.token_acts[i], z[c, s - 1 : s - 1 + CFG.window, f], rtol=0, atol=atol)


def test_band_examples_cover_every_active_context_and_order_by_strength(data, stats):
    encode, x, _, context_ids, _ = data
    z = brute_z(encode, x)
    ex = stats.examples
    for f in range(D_SAE):
        rows = [i for i, k in enumerate(ex.kind) if k != "top" and ex.feature[i] == f]
        # reservoir (50) >= active contexts, per_band = 50: every active context appears exactly once
        active_ctx = set(context_ids[(z[:, :, f] > 0).any(1)].tolist())
        assert sorted(int(ex.context_id[i]) for i in rows) == sorted(active_ctx)
        bands = {}
        for i in rows:
            bands.setdefault(ex.kind[i], []).append(float(ex.activation[i]))
        names = sorted(bands)
        for lo, hi in zip(names, names[1:]):
            assert max(bands[lo]) <= min(bands[hi])  # q0 weakest


def test_token_index_matches_brute_force(data, stats):
    encode, x, tokens, _, atol = data
    z = brute_z(encode, x).reshape(-1, D_SAE)
    tok = tokens[:, 1:].reshape(-1)
    idx = stats.token_index
    for t in tok.unique().tolist():
        occ = tok == t
        mean = z[occ].sum(0) / occ.sum()
        order = [f for f in mean.argsort(descending=True).tolist() if mean[f] > 0][: CFG.token_index_top]
        sel = idx["token_id"] == t
        assert idx["feature"][sel].tolist() == order
        torch.testing.assert_close(idx["mean_act"][sel], mean[order], rtol=1e-5, atol=atol)
        assert idx["count"][sel].tolist() == (z[occ][:, order] > 0).sum(0).tolist()


def test_chunks_keep_contexts_whole_and_reject_bad_input(data):
    _, x, tokens, context_ids, _ = data
    chunks = list(context_chunks(batches(x, tokens, context_ids), 30))
    assert torch.equal(torch.cat([c.context_id for c in chunks]), context_ids)
    assert all(c.position.shape[1] == LENGTH - 1 for c in chunks)
    bad = batches(x, tokens, context_ids)
    bad[1]["x"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        list(context_chunks(bad, 30))
    with pytest.raises(ValueError, match="empty"):
        mine(lambda v: v, 3, [], CFG)


def test_exact_examples_replace_values_with_a_fresh_pass(data, stats):
    encode, x, tokens, context_ids, _ = data
    ex = stats.examples
    fresh = encode(x)  # float32 "forward pass" over full contexts (position 0 included)

    def encode_contexts(tok_rows):  # [b, ctx_len] -> z [b, ctx_len, d_sae]
        rows = (tokens[None] == tok_rows[:, None]).all(-1).float().argmax(1)
        return fresh[rows]

    def tokens_of(ids):
        return tokens[torch.searchsorted(context_ids, ids)]

    which = torch.tensor([k == "top" for k in ex.kind])
    n = exact_examples(ex, encode_contexts, tokens_of, which, contexts_per_batch=7)
    assert n == len(torch.unique(ex.context_id[which]))
    for i in which.nonzero().squeeze(1).tolist():
        c = int(torch.searchsorted(context_ids, ex.context_id[i]))
        f, p, s = int(ex.feature[i]), int(ex.position[i]), int(ex.window_start[i])
        assert float(ex.activation[i]) == float(fresh[c, p, f])
        assert torch.equal(ex.token_acts[i], fresh[c, s : s + CFG.window, f])


def test_display_histogram_keeps_counts_and_exact_ends():
    vals = torch.logspace(-3, 1, 90)
    counts = torch.bincount(hist_bin(vals), minlength=400)
    edges, c = display_histogram(counts, float(vals[0]), float(vals[-1]), max_bins=12)
    assert sum(c) == 90 and len(c) <= 12 and len(edges) == len(c) + 1
    assert edges[0] == float(vals[0]) and edges[-1] == float(vals[-1])
    assert all(a < b for a, b in zip(edges, edges[1:]))
    inner = torch.tensor(edges[1:-1])  # each count is the number of values between its edges
    assert c == torch.bincount(torch.searchsorted(inner, vals, right=True), minlength=len(c)).tolist()


def test_context_counts(data, stats):
    encode, x, _, _, _ = data
    z = brute_z(encode, x)
    assert torch.equal(stats.n_contexts, (z > 0).any(1).sum(0))


def test_a_sparse_encoder_mines_the_same(data):
    """A sparse COO encoder (TopK's encode_active) gives the same statistics, examples and token index."""
    encode, x, tokens, context_ids, _ = data
    stats = mine(encode, D_SAE, batches(x, tokens, context_ids), CFG)
    sparse = mine(lambda v: encode(v).to_sparse(), D_SAE, batches(x, tokens, context_ids), CFG)
    for name in ("n_active", "n_contexts", "max_act", "min_act", "hist"):
        assert torch.equal(getattr(sparse, name), getattr(stats, name)), name
    torch.testing.assert_close(sparse.mean_act, stats.mean_act)
    for name in ("feature", "rank", "context_id", "position", "activation", "token_acts"):
        assert torch.equal(getattr(sparse.examples, name), getattr(stats.examples, name)), name
    for name, column in stats.token_index.items():
        torch.testing.assert_close(sparse.token_index[name], column, msg=name)


def test_windows_off_finds_the_same_examples(data):
    encode, x, tokens, context_ids, _ = data
    full = mine(encode, D_SAE, batches(x, tokens, context_ids), CFG)
    plain = mine(encode, D_SAE, batches(x, tokens, context_ids), dataclasses.replace(CFG, windows=False))
    a, b = full.examples, plain.examples
    assert a.kind == b.kind
    for name in ("feature", "rank", "context_id", "position", "token_id", "window_start", "activation"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not b.token_acts.any()


def test_mining_every_layer_from_one_forward_pass_equals_mining_each(tiny_model):
    from interp.activations import harvest
    from interp.features import forward_chunks, mine_layers

    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(3, 60, (10, 12), generator=g)
    tokens[:, 0] = 1
    ids = torch.arange(10) * 2 + 1
    d = tiny_model.cfg.d_model
    encoders = {}
    for layer in (0, 2):
        w = torch.randn(d, 16, generator=g)
        encoders[layer] = ((lambda x, w=w: torch.relu(x @ w - 0.5)), 16)
    cfg = dataclasses.replace(CFG, tokens_per_chunk=40)
    together = mine_layers(encoders, forward_chunks(tiny_model, tokens, ids, [0, 2], batch_size=3), cfg)
    for layer, (encode, d_sae) in encoders.items():
        rows = [  # the layer alone, as the shard path feeds it: flat batches of (context, position) rows
            {
                "context_id": b.context_id,
                "position": b.position,
                "token_id": tokens[(b.context_id - 1) // 2, b.position],
                "x": b.acts[layer][0],
            }
            for b in harvest(tiny_model, tokens, ids, [layer], batch_size=4)
        ]
        alone = mine(encode, d_sae, rows, cfg)
        assert torch.equal(together[layer].n_active, alone.n_active) and alone.n_active.sum() > 0
        assert torch.equal(together[layer].examples.context_id, alone.examples.context_id)
        torch.testing.assert_close(together[layer].examples.token_acts, alone.examples.token_acts)
    assert not torch.equal(together[0].n_active, together[2].n_active)
