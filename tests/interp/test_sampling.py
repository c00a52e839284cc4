"""Stratified, seeded context samples (interp.sampling)."""

import numpy as np
import pytest

from interp.sampling import allocate, shares, stratified_sample

# The default corpus by contexts: 54% State of the Union, 39% Shakespeare, 7% Moby Dick, stored in file order.
CORPUS = ["moby-dick"] * 2_135 + ["shakespeare"] * 12_826 + ["sotu"] * 16_205


@pytest.mark.parametrize("n", [32, 256, 2_048])
def test_each_source_keeps_its_share_of_the_corpus(n):
    idx = stratified_sample(CORPUS, n, seed=0)
    assert len(idx) == n == len(set(idx.tolist()))
    want, got = shares(CORPUS), shares([CORPUS[i] for i in idx])
    for source, share in want.items():
        assert abs(got[source] - share) <= 1 / n  # largest remainder: off by less than one draw
    # the first rows of the corpus are one book; a sample's first rows are not
    assert len({CORPUS[i] for i in idx[: min(n, 32)]}) == 3


def test_the_first_n_rows_would_fail_the_same_check():
    first = CORPUS[:256]
    assert abs(shares(first).get("sotu", 0.0) - shares(CORPUS)["sotu"]) > 0.5


def test_seeded_and_spread_over_the_source():
    a, b, c = (stratified_sample(CORPUS, 500, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(np.sort(a), np.sort(c))
    sotu = np.sort([i for i in a if CORPUS[i] == "sotu"]) - CORPUS.index("sotu")
    # uniform over the source's rows: both halves of the source are drawn from
    assert (sotu < 16_205 / 2).mean() == pytest.approx(0.5, abs=0.15)


def test_allocation_is_exact_and_bad_sizes_are_clear_errors():
    assert allocate({"a": 3, "b": 1}, 4) == {"a": 3, "b": 1}
    assert sum(allocate({"a": 5, "b": 7, "c": 1}, 6).values()) == 6
    with pytest.raises(ValueError, match="at most 4"):
        stratified_sample(["a", "a", "a", "b"], 5, seed=0)
    # a source too small for its share gives all it has; the others fill the rest in proportion
    assert allocate({"a": 50, "b": 30, "c": 20}, 60, {"a": 20, "b": 100, "c": 100}) == {
        "a": 20,
        "b": 24,
        "c": 16,
    }
    with pytest.raises(ValueError, match="at least one"):
        stratified_sample(["a"], 0, seed=0)


def test_a_split_sampled_in_the_corpus_proportions():
    """Whole documents are held out, so a split's mix drifts from the corpus'; weights restore the corpus mix."""
    split = ["moby-dick"] * 183 + ["shakespeare"] * 1_004 + ["sotu"] * 981  # 8% / 46% / 45%
    idx = stratified_sample(
        split, 1_000, seed=0, weights={"moby-dick": 2_135, "shakespeare": 12_826, "sotu": 16_205}
    )
    got, want = shares([split[i] for i in idx]), shares(CORPUS)
    assert all(abs(got[s] - want[s]) <= 1 / 1_000 for s in want)
