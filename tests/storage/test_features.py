"""Feature tables: rows written from a real mining run, replaced (not duplicated) on re-write, cleared per layer.

`build_atlas` makes a small atlas database (contexts, vocab, eval activation shards of the tiny model, random
sparse transcoders with a recorded gate verdict); the asset and example-query tests reuse it.
"""

from __future__ import annotations

import polars as pl
import pytest
import torch

from interp.activations import harvest
from interp.features import MinerConfig, mine
from interp.model import mlp_hooks
from interp.transcoder import Transcoder, TranscoderConfig
from storage import activations as act_store
from storage import corpus as corpus_store
from storage import features as feature_store
from storage import layout
from storage import transcoders as tc_store
from storage.db import readers
from tests.conftest import TINY_CHARS

N_CTX, CTX_LEN, D_SAE = 30, 16, 64


def build_atlas(
    model,
    model_name: str,
    layers: dict[int, bool],
    seed: int = 0,
    tokens: torch.Tensor | None = None,
    vocab: list[str] | None = None,
    d_sae: int = D_SAE,
) -> dict[int, str]:
    """Contexts + vocab + eval shards + one transcoder per layer (gate passed/failed as given); layer -> id.

    Default text: random tiny-model tokens with BOS first and the token 'A' planted at position 5."""
    g = torch.Generator().manual_seed(seed)
    if tokens is None:
        vocab = ["<unk>", "<s>", "</s>", *TINY_CHARS]
        tokens = torch.randint(3, len(vocab), (N_CTX, CTX_LEN), generator=g)
        tokens[:, 0] = 1  # BOS
        tokens[:, 5] = vocab.index("A")  # a token every context shares, for the token queries
    ids = torch.arange(len(tokens)) * 2 + 100
    corpus_store.write_contexts(
        pl.DataFrame(
            {
                "context_id": ids.numpy().astype("int32"),
                "split": "eval",
                "source": "toy",
                "tokens": tokens.tolist(),
                "text": ["".join(vocab[t] for t in row[1:]) for row in tokens.tolist()],
            }
        )
    )
    corpus_store.write_vocab(model_name, vocab or [])
    out = {}
    for layer, passed in layers.items():
        shards = []
        for i, batch in enumerate(harvest(model, tokens, ids, [layer], batch_size=8)):
            x, y = batch.acts[layer]
            path = layout.activation_shard_path(model_name, layer, "eval", "run0", i)
            shards.append(act_store.write_shard(path, batch.context_id.numpy(), batch.position.numpy(), x, y))
        hook_in, hook_out = mlp_hooks(layer)
        act_store.record_manifest(
            model_name,
            layer,
            "eval",
            shards,
            {
                "hook_in": hook_in,
                "hook_out": hook_out,
                "d_model": model.cfg.d_model,
            },
        )
        d = model.cfg.d_model
        cfg = TranscoderConfig(
            d_in=d, d_sae=d_sae, d_out=d, architecture="relu", skip=False, layer=layer, model_name=model_name
        )
        tc = Transcoder(cfg)
        tc.reset_parameters(torch.Generator().manual_seed(seed + layer))
        with torch.no_grad():
            tc.W_enc.mul_(0.5)
            tc.b_enc.fill_(-0.1)  # sparse: each feature fires on a fraction of tokens
        tid = tc_store.transcoder_id(model_name, layer, "relu", d_sae)
        reason = "" if passed else "fvu 0.9 > max_fvu 0.5"
        tc_store.save_transcoder(
            tc, tid, {}, 0, pl.DataFrame(), {"gate_passed": passed, "gate_reason": reason}
        )
        out[layer] = tid
    return out


def mine_layer(model_name: str, layer: int, tid: str):
    tc = tc_store.load_transcoder(tid)
    tokens, context_ids = corpus_store.load_contexts("eval")
    row = {int(c): i for i, c in enumerate(context_ids)}

    def batches():
        for b in act_store.iter_shards(model_name, layer, "eval", columns=("context_id", "position", "x")):
            rows = torch.tensor([row[int(c)] for c in b["context_id"]])
            yield {**b, "token_id": tokens[rows, b["position"]]}

    cfg = MinerConfig(n_top=6, window=8, window_left=5, n_reservoir=16, per_band=3, token_index_top=4)
    return mine(tc.encode, tc.d_sae, batches(), cfg)


@pytest.fixture
def atlas(atlas_home, tiny_model, tiny_model_dir):
    return build_atlas(tiny_model, tiny_model_dir, {1: True, 2: False})


def test_write_mined_rows_replace_and_clear(atlas, tiny_model_dir):
    tid = atlas[1]
    stats = mine_layer(tiny_model_dir, 1, tid)
    labels = [f"f{i}" for i in range(D_SAE)]
    counts = feature_store.write_mined(tid, stats, labels)
    again = feature_store.write_mined(tid, stats, labels)  # idempotent: same rows, no duplicates
    assert counts == again
    n = {
        t: readers.query(f"SELECT count(*) AS n FROM {t} WHERE transcoder_id = ?", [tid])["n"][0]
        for t in counts
    }
    assert n == counts and n["features"] == D_SAE
    f = readers.query("SELECT * FROM features WHERE transcoder_id = ? ORDER BY feature", [tid])
    assert f["n_active"].to_list() == stats.n_active.tolist()
    assert f["density"].to_numpy() == pytest.approx((stats.n_active / stats.n_tokens).numpy(), rel=1e-6)
    live = f.filter(pl.col("n_active") > 0)
    assert (live["hist_counts"].list.sum() == live["n_active"]).all()  # histograms hold every active token
    assert all(e[0] <= q[0] and q[-1] <= e[-1] for e, q in zip(live["hist_edges"], live["quantiles"]))
    ex = readers.query(
        "SELECT * FROM feature_examples WHERE transcoder_id = ? AND kind = 'top' AND rank = 0", [tid]
    )
    best = ex.sort("feature")
    assert best["activation"].to_numpy() == pytest.approx(stats.max_act[best["feature"].to_numpy()].numpy())
    assert all(len(a) == 8 for a in best["token_acts"])
    assert feature_store.clear_layer(tiny_model_dir, 1, feature_store.MINED_TABLES) == 1
    assert (
        readers.query("SELECT count(*) AS n FROM feature_examples WHERE transcoder_id = ?", [tid])["n"][0]
        == 0
    )
