"""The Neuronpedia bulk-import export holds every feature and example of a transcoder, values intact."""

from __future__ import annotations

import glob
import gzip
import json
import os

import pytest
import torch

from interp.neighbors import decoder_neighbors
from interp.token_effects import deembedding, logit_effects
from storage import corpus as corpus_store
from storage import features as feature_store
from storage import neuronpedia
from storage import transcoders as tc_store
from storage.db import readers
from tests.storage.test_features import D_SAE, build_atlas, mine_layer


def _records(folder: str) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "batch-*.jsonl.gz"))):
        with gzip.open(path, "rt") as f:
            out += [json.loads(line) for line in f]
    return out


def test_export_round_trips_features_and_examples(atlas_home, tiny_model, tiny_model_dir):
    tid = build_atlas(tiny_model, tiny_model_dir, {1: True})[1]
    stats = mine_layer(tiny_model_dir, 1, tid)
    feature_store.write_mined(tid, stats, [f"label {i}" for i in range(D_SAE)])
    tc = tc_store.load_transcoder(tid)
    W_dec, W_U = tc.W_dec.detach(), tiny_model.W_U.detach()
    top, bottom = logit_effects(W_dec, W_U, 4)
    effects = {
        "deembed": deembedding(tc.W_enc.detach(), tiny_model.W_E.detach(), 4),
        "logit_top": top,
        "logit_bottom": bottom,
    }
    feature_store.write_weight_views(tid, effects, decoder_neighbors([W_dec], [0], 3)[0], [tid])

    path = neuronpedia.export(tid, batch_size=20)
    assert os.path.basename(path) == "1-atlas-tc"
    feats = _records(os.path.join(path, "features"))
    assert [int(r["index"]) for r in feats] == list(range(D_SAE))
    vocab = corpus_store.token_strings(tiny_model_dir)
    for r in feats[:10]:
        f = int(r["index"])
        assert r["pos_str"] == [vocab[t] for t in top.token_id[f].tolist()]
        assert r["neg_values"] == pytest.approx(bottom.value[f].tolist(), rel=1e-5)
        assert r["frac_nonzero"] == pytest.approx(float(stats.density[f]), rel=1e-5)
        assert sum(r["freq_hist_data_bar_heights"]) == int(stats.n_active[f])
        assert len(r["topkCosSimIndices"]) == 3 and f not in r["topkCosSimIndices"]
    acts = _records(os.path.join(path, "activations"))
    rows = readers.query("SELECT count(*) AS n FROM feature_examples WHERE transcoder_id = ?", [tid])["n"][0]
    assert len(acts) == rows and len({a["id"] for a in acts}) == rows
    for a in acts[:50]:
        assert len(a["tokens"]) == len(a["values"]) == 8
        assert a["values"][a["maxValueTokenIndex"]] == max(a["values"])
        q = a["qualifyingTokenIndex"]
        ex = readers.query(
            "SELECT activation FROM feature_examples WHERE transcoder_id = ? AND feature = ? AND kind || ':' || rank = ?",
            [tid, int(a["index"]), a["id"].split(":", 2)[2]],
        )["activation"][0]
        assert a["values"][q] == pytest.approx(ex, rel=1e-6)  # the stored REAL (float32) value, exported
    assert torch.tensor([a["binMin"] for a in acts if ":top:" in a["id"]]).eq(-1).all()
