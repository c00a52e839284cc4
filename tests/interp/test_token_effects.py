"""Token effects, decoder neighbours and labels against brute force and planted answers."""

from __future__ import annotations

import torch

from interp.labels import label_from_tokens
from interp.neighbors import decoder_neighbors
from interp.token_effects import deembedding, logit_effects, top_tokens


def test_top_tokens_in_blocks_equal_one_big_product():
    g = torch.Generator().manual_seed(1)
    rows, unembed = torch.randn(37, 8, generator=g), torch.randn(8, 50, generator=g)
    full = rows @ unembed
    got = top_tokens(rows, unembed, k=5, block=10)
    ref_v, ref_t = full.topk(5, dim=1)
    assert torch.equal(got.token_id, ref_t)
    torch.testing.assert_close(got.value, ref_v)
    low = top_tokens(rows, unembed, k=5, largest=False, block=7)
    torch.testing.assert_close(low.value, full.topk(5, dim=1, largest=False).values)


def test_planted_feature_reads_and_writes_its_token(tiny_model):
    W_E, W_U = tiny_model.W_E.detach(), tiny_model.W_U.detach()  # [vocab, d], [d, vocab]
    d, vocab = W_E.shape[1], W_E.shape[0]
    W_enc = torch.randn(d, 4) * 1e-3
    W_enc[:, 2] = W_E[17]  # feature 2 reads token 17's embedding direction
    W_dec = torch.randn(4, d) * 1e-3
    W_dec[1] = W_U[:, 23] - W_U.mean(1)  # feature 1 writes the direction that raises token 23's logit most
    de = deembedding(W_enc, W_E, k=3)
    assert de.token_id.shape == (4, 3)
    assert int(de.token_id[2, 0]) == int((W_E @ W_E[17]).argmax())
    top, bottom = logit_effects(W_dec, W_U, k=3)
    assert int(top.token_id[1, 0]) == int((W_dec[1] @ W_U).argmax())
    assert int(bottom.token_id[1, 0]) == int((W_dec[1] @ W_U).argmin())
    assert vocab > 3 and (top.value[:, 0] >= bottom.value[:, 0]).all()


def test_decoder_neighbors_match_brute_force_and_skip_self():
    g = torch.Generator().manual_seed(2)
    banks = [torch.randn(n, 6, generator=g) for n in (30, 20, 25)]
    banks[1][5] = 3.0 * banks[0][11]  # planted twin in another layer: cosine 1
    unit = lambda w: w / w.norm(dim=1, keepdim=True)  # noqa: E731
    offsets = [0, 30, 50]  # column of each bank's row 0 in the concatenated brute-force matrix
    every = torch.cat([unit(b) for b in banks])  # [75, 6]
    # queries 0 and 2: the pair (0, 2) is computed once and read both ways; bank 1 is a candidate only
    found = decoder_neighbors(banks, [0, 2], k=4, block=8)
    assert set(found) == {0, 2}
    assert (int(found[0].bank[11, 0]), int(found[0].feature[11, 0])) == (1, 5)
    assert abs(float(found[0].cosine[11, 0]) - 1) < 1e-5
    for q, nb in found.items():
        cos = unit(banks[q]) @ every.T  # [n_q, 75]
        own = torch.arange(len(banks[q]))
        cos[own, own + offsets[q]] = -3.0  # a row is never its own neighbour
        ref = cos.topk(4, dim=1)
        torch.testing.assert_close(nb.cosine, ref.values)
        flat = torch.tensor(offsets)[nb.bank] + nb.feature
        torch.testing.assert_close(cos.gather(1, flat), ref.values)  # same neighbours up to ties
        assert not ((nb.bank == q) & (nb.feature == own.view(-1, 1))).any()
    # fewer candidates than k: every other row, once
    small = decoder_neighbors([torch.randn(3, 6, generator=g)], [0], k=10)[0]
    assert small.cosine.shape == (3, 2) and (small.bank == 0).all() and (small.cosine > -1.0001).all()


def test_labels_name_the_dominant_token_or_the_top_few():
    assert label_from_tokens([" America", " America", " the"], [5.0, 4.0, 1.0]) == "' America'"
    assert label_from_tokens([" a", " b", " c", " d"], [1, 1, 1, 0.5]) == "' a' | ' b' | ' c'"
    assert label_from_tokens(["\n"], [2.0]) == "'\\n'"
    assert label_from_tokens([], []) == ""
