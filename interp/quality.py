"""Quality gates for a trained transcoder, on its held-out metrics (interp.evals), in two levels.

1. The blocking gate answers "is this transcoder broken?" — randomly initialized, barely trained, or trained on
   another layer. It fails when the transcoder explains less than `1 - max_fvu_typical` of the variance of the
   typical tokens (the FVU over tokens below the massive-activation threshold; the overall FVU is dominated by a
   few sink tokens on some layers), or, on a layer whose MLP matters (mean-ablating it costs at least
   `matters_delta_ce` nats), when it recovers less than `min_ce_recovered_blocking` of the loss. A layer whose MLP
   does not matter has a CE recovered that is a ratio of two tiny numbers: noise, never a verdict.
2. The quality goals are warnings (non-blocking) on layers whose MLP matters: CE recovered >= `goal_ce_recovered`,
   L0 <= `goal_l0` and dead fraction <= `goal_dead_frac`; and, on every layer, FVU <= `goal_max_fvu`. A
   transcoder can pass the gate and miss a goal. The build stores `goal_misses`; the app (Home, feature cards)
   calls `goal_misses` and `mlp_matters` on the stored metrics, where a metric can be missing (not evaluated):
   a missing metric misses no goal.

NaN metrics fail whatever they are compared with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Thresholds:
    max_fvu_typical: float = 0.8
    """Blocking: the most typical-token FVU a transcoder may have. A trained SmolLM2 transcoder explains most
    typical-token variance; a random, 10-step or wrong-layer one explains almost none (FVU near or above 1)."""
    min_ce_recovered_blocking: float = 0.5
    """Blocking: the least CE recovered on a layer whose MLP matters."""
    matters_delta_ce: float = 0.1
    """Nats of mean-ablation loss that make a layer's MLP matter (docs/evaluation.md, "Gates and goals")."""
    goal_ce_recovered: float = 0.90
    """Goal (a warning): CE recovered where the MLP matters."""
    goal_l0: float = 32.0
    """Goal (a warning): active features per token, at most."""
    goal_dead_frac: float = 0.05
    """Goal (a warning): fraction of features that never fire on the held-out tokens, at most."""
    goal_max_fvu: float = 0.9
    """Goal (a warning) on every layer: the most FVU; above it the transcoder explains almost none of its MLP's
    output variance."""

    def asdict(self) -> dict[str, float]:
        return asdict(self)


DEFAULTS = Thresholds()
# A metric within EPS of its goal meets it: stored metrics are float32, and 0.05 reads back as 0.0500000007.
EPS = 1e-6


def mlp_matters(m: Mapping[str, float | None], t: Thresholds = DEFAULTS) -> bool | None:
    """Whether mean-ablating the layer's MLP costs at least `matters_delta_ce` nats (None: not evaluated)."""
    if m.get("ce_ablated") is None or m.get("ce_clean") is None:
        return None
    return m["ce_ablated"] - m["ce_clean"] >= t.matters_delta_ce


def gate(m: Mapping[str, float], t: Thresholds) -> tuple[bool, str]:
    """(passed, reason): the blocking gate; every failure named with its value and threshold."""
    fails = []
    if not m["fvu_typical"] <= t.max_fvu_typical:
        fails.append(f"fvu_typical {m['fvu_typical']:.3f} > {t.max_fvu_typical}")
    if not m["ce_recovered"] == m["ce_recovered"]:  # NaN: ablation and clean loss are equal
        fails.append("ce_recovered is NaN")
    elif mlp_matters(m, t) and not m["ce_recovered"] >= t.min_ce_recovered_blocking:
        fails.append(f"ce_recovered {m['ce_recovered']:.3f} < {t.min_ce_recovered_blocking}")
    return not fails, "; ".join(fails)


def goal_misses(m: Mapping[str, float | None], t: Thresholds = DEFAULTS) -> list[str]:
    """The quality goals the metrics miss, each a short phrase with its value and goal ('CE recovered 0.820 <
    0.90'): FVU on every layer, the others on a layer whose MLP matters; a missing (None) metric misses none."""
    # one more digit than the goal, so a near miss never reads as 'CE recovered 0.90 < 0.90'
    out = []
    if m.get("fvu") is not None and not m["fvu"] <= t.goal_max_fvu + EPS:
        out.append(f"FVU {m['fvu']:.3f} > {t.goal_max_fvu:g}")
    if not mlp_matters(m, t):
        return out
    if m.get("ce_recovered") is not None and not m["ce_recovered"] >= t.goal_ce_recovered - EPS:
        out.append(f"CE recovered {m['ce_recovered']:.3f} < {t.goal_ce_recovered:.2f}")
    if m.get("l0") is not None and not m["l0"] <= t.goal_l0 + EPS:
        out.append(f"L0 {m['l0']:.1f} > {t.goal_l0:g}")
    if m.get("dead_frac") is not None and not m["dead_frac"] <= t.goal_dead_frac + EPS:
        out.append(f"dead {m['dead_frac']:.2%} > {t.goal_dead_frac:.0%}")
    return out
