"""Seeded samples of contexts that represent the corpus: stratified by source, spread over documents.

Every selection of contexts (training activations, the CE evaluation set, the mining set, the mean-ablation
baseline) is drawn here, never as "the first N rows": a corpus is stored in file order, so its first rows are one
book.

Algorithm (`stratified_sample`):
  1. Allocate n draws to the sources in proportion to their weights (largest remainder, ties broken by source
     name), so each source's share of the sample is within 1/n of its share of the weights. The weights default
     to how many contexts each source has among those sampled from; pass the whole corpus' counts to sample a
     split (whole documents are held out, so a split's mix drifts from the corpus') in the corpus' proportions.
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


def allocate(weights: dict[str, float], n: int, capacity: dict[str, int] | None = None) -> dict[str, int]:
    """Draws per source, proportional to `weights` (largest remainder), never more than a source's `capacity`
    (default: the weights as counts). A source too small for its share gives all it has and the others share the
    rest in proportion, so the sample is as close to the weights as the sources allow."""
    capacity = capacity if capacity is not None else {s: int(w) for s, w in weights.items()}
    available = sum(capacity.get(s, 0) for s in weights)
    if n > available:
        raise ValueError(f"Cannot sample {n} contexts from {available}; ask for at most {available}.")
    out: dict[str, int] = {}
    active, left = set(weights), n
    while True:  # water-filling: fix the sources that cannot give their share
        total = sum(weights[s] for s in active)
        full = {s for s in active if left * weights[s] / total >= capacity.get(s, 0)}
        if not full:
            break
        for s in full:
            out[s] = capacity.get(s, 0)
        active, left = active - full, left - sum(out[s] for s in full)
    total = sum(weights[s] for s in active) or 1.0
    exact = {s: left * weights[s] / total for s in active}
    out |= {s: int(q) for s, q in exact.items()}
    by_remainder = sorted(active, key=lambda s: (-(exact[s] - out[s]), s))
    for s in by_remainder[: n - sum(out.values())]:
        out[s] += 1
    return out


def stratified_sample(
    sources: Sequence[str], n: int, seed: int, weights: dict[str, float] | None = None
) -> np.ndarray:
    """Indices [n] into `sources` (the source of each context), stratified by source in proportion to `weights`
    (default: the sources' counts here), in a seeded random order."""
    if n <= 0:
        raise ValueError(f"A sample needs at least one context, got n={n}.")
    groups = np.asarray(sources, dtype=object)
    names, inverse = np.unique(groups, return_inverse=True)
    members = {str(s): np.flatnonzero(inverse == i) for i, s in enumerate(names)}
    counts = {s: len(m) for s, m in members.items()}
    quota = allocate(weights or counts, n, counts)
    picked = [
        np.random.default_rng(_source_seed(seed, s)).choice(members[s], size=quota[s], replace=False)
        for s in sorted(members)
        if quota.get(s, 0)
    ]
    chosen = np.concatenate(picked)
    return np.random.default_rng(seed).permutation(chosen)


def shares(sources: Sequence[str]) -> dict[str, float]:
    """Each source's share of a list of context sources."""
    names, counts = np.unique(np.asarray(sources, dtype=object), return_counts=True)
    return {str(s): float(c / counts.sum()) for s, c in zip(names, counts)}
