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
    q = torch.randn(30, 6, generator=g)
    other = torch.randn(20, 6, generator=g)
    other[5] = 3.0 * q[11]  # planted twin in another layer: cosine 1
    nb = decoder_neighbors(q, [q, other], self_bank=0, k=4, block=8)
    assert (int(nb.bank[11, 0]), int(nb.feature[11, 0])) == (1, 5)
    assert abs(float(nb.cosine[11, 0]) - 1) < 1e-5
    unit = lambda w: w / w.norm(dim=1, keepdim=True)  # noqa: E731
    cos = torch.cat([unit(q) @ unit(q).T - 3 * torch.eye(30), unit(q) @ unit(other).T], 1)  # self excluded
    ref = cos.topk(4, dim=1)
    torch.testing.assert_close(nb.cosine, ref.values)
    flat = nb.bank * 30 + nb.feature  # bank 0 columns 0..29, bank 1 columns 30..49
    torch.testing.assert_close(cos.gather(1, flat), ref.values)  # same neighbours up to ties (the twin)
    assert not ((nb.bank == 0) & (nb.feature == torch.arange(30).view(-1, 1))).any()


def test_labels_name_the_dominant_token_or_the_top_few():
    assert label_from_tokens([" America", " America", " the"], [5.0, 4.0, 1.0]) == "' America'"
    assert label_from_tokens([" a", " b", " c", " d"], [1, 1, 1, 0.5]) == "' a' | ' b' | ' c'"
    assert label_from_tokens(["\n"], [2.0]) == "'\\n'"
    assert label_from_tokens([], []) == ""
