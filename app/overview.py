"""The overview's quality goals (DESIGN §7, README "Against the goals"): which metric of a transcoder misses one.

The goals and their thresholds are interp.quality's, the ones the build's warning checks use: on layers whose MLP
matters (mean-ablating it costs >= MATTERS_NATS of next-token loss), CE recovered >= 0.90, L0 <= 32, dead
features <= 5%. Here they read rows from the database, where a metric can be missing (not evaluated). An FVU above
0.9 is flagged on every layer: the transcoder explains almost none of its MLP's output variance.
"""

from __future__ import annotations

from typing import Any

from interp.quality import Thresholds

_GOALS = Thresholds()
MATTERS_NATS = _GOALS.matters_delta_ce  # ce_ablated - ce_clean at or above this: the layer's MLP matters
MIN_CE_RECOVERED = _GOALS.goal_ce_recovered
MAX_L0 = _GOALS.goal_l0
MAX_DEAD_FRAC = _GOALS.goal_dead_frac
MAX_FVU = 0.9
EPS = 1e-6  # metrics are stored as REAL (float32): 0.05 reads back as 0.0500000007


def mlp_matters(row: dict[str, Any]) -> bool | None:
    """Whether mean-ablating the layer's MLP costs >= MATTERS_NATS (None when not evaluated)."""
    if row.get("ce_ablated") is None or row.get("ce_clean") is None:
        return None
    return row["ce_ablated"] - row["ce_clean"] >= MATTERS_NATS


def goal_misses(row: dict[str, Any]) -> list[str]:
    """Each goal the transcoder's metrics miss, as a short phrase ('CE recovered 0.82 < 0.90')."""
    misses = []
    if row.get("fvu") is not None and row["fvu"] > MAX_FVU + EPS:
        misses.append(f"FVU {row['fvu']:.2f} > {MAX_FVU:.1f}")
    if not mlp_matters(row):
        return misses
    if row.get("ce_recovered") is not None and row["ce_recovered"] < MIN_CE_RECOVERED - EPS:
        misses.append(f"CE recovered {row['ce_recovered']:.2f} < {MIN_CE_RECOVERED:.2f}")
    if row.get("l0") is not None and row["l0"] > MAX_L0 + EPS:
        misses.append(f"L0 {row['l0']:.1f} > {MAX_L0:.0f}")
    if row.get("dead_frac") is not None and row["dead_frac"] > MAX_DEAD_FRAC + EPS:
        misses.append(f"dead {row['dead_frac']:.1%} > {MAX_DEAD_FRAC:.0%}")
    return misses
