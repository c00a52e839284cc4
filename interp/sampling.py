"""Seeded samples of contexts that represent the corpus: stratified by source, spread over documents.

Every selection of contexts (training activations, the CE evaluation set, the mining set, the mean-ablation
baseline) is drawn here, never as "the first N rows": a corpus is stored in file order, so its first rows are one
book.

Algorithm (`stratified_sample`):
  1. Allocate n draws to the sources in proportion to how many contexts each has (largest remainder, ties broken by
     source name), so each source's share of the sample is within 1/n of its share of the corpus.
  2. Within a source, draw uniformly without replacement with a generator seeded by (seed, source name): documents
     are hit in proportion to their length, and a source's draws do not change when another source is added.
  3. Return the chosen indices in a seeded random order, so any prefix of the sample (a batch, a shuffle buffer)
     mixes the sources too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def _source_seed(seed: int, source: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{source}".encode()).digest()[:8], "big")


def allocate(counts: dict[str, int], n: int) -> dict[str, int]:
    """Draws per source, proportional to `counts` (largest remainder); every draw fits in its source."""
    total = sum(counts.values())
    if n > total:
        raise ValueError(f"Cannot sample {n} contexts from a split of {total}; ask for at most {total}.")
    exact = {s: n * c / total for s, c in counts.items()}
    out = {s: int(q) for s, q in exact.items()}
    by_remainder = sorted(counts, key=lambda s: (-(exact[s] - out[s]), s))
    for s in by_remainder[: n - sum(out.values())]:
        out[s] += 1
    return out


def stratified_sample(sources: Sequence[str], n: int, seed: int) -> np.ndarray:
    """Indices [n] into `sources` (the source of each context), stratified by source, in a seeded random order."""
    if n <= 0:
        raise ValueError(f"A sample needs at least one context, got n={n}.")
    groups = np.asarray(sources, dtype=object)
    names, inverse = np.unique(groups, return_inverse=True)
    members = {str(s): np.flatnonzero(inverse == i) for i, s in enumerate(names)}
    quota = allocate({s: len(m) for s, m in members.items()}, n)
    picked = [
        np.random.default_rng(_source_seed(seed, s)).choice(members[s], size=quota[s], replace=False)
        for s in sorted(members)
    ]
    chosen = np.concatenate(picked)
    return np.random.default_rng(seed).permutation(chosen)


def shares(sources: Sequence[str]) -> dict[str, float]:
    """Each source's share of a list of context sources."""
    names, counts = np.unique(np.asarray(sources, dtype=object), return_counts=True)
    return {str(s): c / counts.sum() for s, c in zip(names, counts)}
