"""Short automatic feature labels from the tokens a feature fires on (no external service).

A feature's label lists the distinct tokens under its top examples, weighted by activation: the strongest
token alone when it carries at least `dominant` of the weight, else up to `n_tokens` tokens joined by ' | '.
Token strings are shown with repr-style quoting so whitespace tokens stay visible (' the', '\\n').
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence


def _show(token: str) -> str:
    return repr(token)


def label_from_tokens(
    tokens: Sequence[str], weights: Sequence[float], n_tokens: int = 3, dominant: float = 0.6
) -> str:
    """Label from the tokens under a feature's top examples and their activations ('' when there are none)."""
    mass: dict[str, float] = defaultdict(float)
    for tok, w in zip(tokens, weights):
        mass[tok] += float(w)
    if not mass:
        return ""
    ranked = sorted(mass.items(), key=lambda kv: -kv[1])
    total = sum(mass.values())
    if ranked[0][1] >= dominant * total:
        return _show(ranked[0][0])
    return " | ".join(_show(t) for t, _ in ranked[:n_tokens])
