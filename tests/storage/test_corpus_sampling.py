"""Samples of stored contexts: seeded, stratified by corpus in the whole corpus' proportions, any split."""

import polars as pl
import pytest

from interp.sampling import shares
from storage import corpus as corpus_store
from storage.db import readers


@pytest.fixture
def contexts(atlas_home):
    # stored in file order, one book after another; the eval split's mix differs from the corpus'
    corpus = ["moby-dick"] * 70 + ["shakespeare"] * 390 + ["sotu"] * 540
    split = [
        "eval" if i % 5 == 0 or (c == "shakespeare" and i % 5 == 1) else "train" for i, c in enumerate(corpus)
    ]
    frame = pl.DataFrame(
        {
            "context_id": range(len(corpus)),
            "split": split,
            "corpus": corpus,
            "source": [f"{c}.txt" for c in corpus],
            "tokens": [[1, i % 50 + 2] for i in range(len(corpus))],
            "text": ["x"] * len(corpus),
        },
        schema_overrides={"context_id": pl.Int32, "tokens": pl.List(pl.Int32)},
    )
    corpus_store.write_contexts(frame)
    return frame


def test_samples_follow_the_corpus_mix_in_either_split(contexts):
    want = corpus_store.corpus_shares()
    assert want == pytest.approx({"moby-dick": 0.07, "shakespeare": 0.39, "sotu": 0.54})
    assert corpus_store.corpus_shares("eval")["shakespeare"] > 0.5  # the split alone would over-sample plays
    for split, n in (("train", 300), ("eval", 100)):
        tokens, ids = corpus_store.sample_contexts(split, n, seed=0)
        assert tokens.shape == (n, 2) and len(set(ids.tolist())) == n
        rows = contexts.filter(pl.col("context_id").is_in(ids.tolist()))
        assert set(rows["split"]) == {split}
        got = shares(rows["corpus"].to_list())
        assert all(abs(got[c] - want[c]) <= 0.02 for c in want), (split, got)
        # tokens come back in the sample's order
        assert tokens[:, 1].tolist() == [i % 50 + 2 for i in ids.tolist()]
    assert corpus_store.sample_context_ids("eval", 50, seed=3) == corpus_store.sample_context_ids(
        "eval", 50, 3
    )


def test_too_large_a_sample_is_a_clear_error(contexts):
    n_eval = readers.query("SELECT count(*) AS n FROM contexts WHERE split = 'eval'")["n"][0]
    with pytest.raises(ValueError, match=f"the split holds {n_eval}"):
        corpus_store.sample_contexts("eval", n_eval + 1, seed=0)


def test_a_sample_can_leave_out_contexts_already_seen(contexts):
    seen = corpus_store.sample_context_ids("train", 300, seed=0)
    again = corpus_store.sample_context_ids("train", 300, seed=0, exclude=seen)
    assert not set(again) & set(seen) and len(set(again)) == 300
    got = shares(contexts.filter(pl.col("context_id").is_in(again))["corpus"].to_list())
    assert abs(got["sotu"] - 0.54) <= 0.02  # still the corpus' mix
    n_train = readers.query("SELECT count(*) AS n FROM contexts WHERE split = 'train'")["n"][0]
    with pytest.raises(ValueError, match=f"{n_train - 300} are left"):
        corpus_store.sample_context_ids("train", n_train - 299, seed=0, exclude=seen)
