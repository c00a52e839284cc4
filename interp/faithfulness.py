"""Faithfulness of an attribution graph on the real model: does zeroing a feature move the target the way the graph
says it will?

For the graph's `n` feature nodes of largest |influence|, the graph predicts that zero-ablating node b changes the
target by −influence_b (the attribution flowing from b to the target along the graph's edges, linear through the
downstream features it feeds). The model then runs with b's decoder contribution z_b f_dec,b removed from its MLP's
output (interp.ablation), in settings that thaw the graph's frozen linear model one part at a time:

  replacement_model       patterns and norm scales frozen, every MLP with a transcoder replaced by it (error held):
                          the model the graph linearises, so only the search's left-out paths and the features'
                          nonlinearity (TopK, ReLU) separate prediction and outcome
  attention_norms_frozen  patterns and norm scales frozen, every MLP real and live: do the transcoders stand in for
                          the MLPs they replace?
  attention_frozen        patterns frozen, norms and MLPs live (the setting the goals are stated for)
  nothing_frozen          the model as it is: patterns, norms and every MLP respond

The last three are the real model, MLPs live. Each setting's predicted and actual changes are compared by Pearson
and Spearman correlation and by sign agreement (the share of nodes whose ablation moves the target the way the
graph says; an actual change of exactly 0 agrees only with a prediction of 0). Read down the ladder, the drop
between two rows is what the thawed part costs.

attention_frozen is the goal's setting (docs/circuits.md). The consistency check — direct effects against
ablations with every MLP output frozen, the graph's own linear model — lives in tests/interp/test_attribution_real.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from interp.ablation import ablation_effects
from interp.attribution import AttributionGraph
from interp.transcoder import Transcoder

SETTINGS: dict[str, tuple[str, ...]] = {  # name -> what interp.ablation.ablation_effects freezes
    "replacement_model": ("pattern", "scale", "replacement"),
    "attention_norms_frozen": ("pattern", "scale"),
    "attention_frozen": ("pattern",),
    "nothing_frozen": (),
}
TOP_NODES = 20


@dataclass(frozen=True)
class NodeIntervention:
    node_id: str
    layer: int
    position: int
    feature: int
    predicted: float  # −influence: the graph's change of the target when the feature is zeroed
    actual: dict[str, float]  # setting -> measured change (ablated − clean) in the real model


def top_feature_nodes(graph: AttributionGraph, n: int = TOP_NODES) -> list[str]:
    """Ids of the graph's n feature nodes of largest |influence| (ties broken by id, so the choice is stable)."""
    features = [(nid, node) for nid, node in graph.nodes.items() if node.kind == "feature"]
    features.sort(key=lambda item: (-abs(item[1].influence), item[0]))
    return [nid for nid, _ in features[:n]]


def intervene(
    model,
    graph: AttributionGraph,
    transcoders: Mapping[int, Transcoder],
    n: int = TOP_NODES,
    settings: Mapping[str, Sequence[str]] = SETTINGS,
) -> list[NodeIntervention]:
    """Zero each of the graph's top `n` feature nodes in the real model, once per setting (see module doc)."""
    ids = top_feature_nodes(graph, n)
    if not ids:
        return []
    nodes = [graph.nodes[i] for i in ids]
    ablations = [(node.layer, node.position, node.feature) for node in nodes]
    device = next(iter(transcoders.values())).W_enc.device
    tokens = torch.tensor(graph.tokens, device=device)  # [pos]
    actual = {
        name: ablation_effects(model, tokens, transcoders, graph.target, ablations, freeze=tuple(freeze))
        for name, freeze in settings.items()
    }
    return [
        NodeIntervention(
            node_id=nid,
            layer=node.layer,
            position=node.position,
            feature=node.feature,
            predicted=-float(node.influence),
            actual={name: float(effects[row]) for name, effects in actual.items()},
        )
        for row, (nid, node) in enumerate(zip(ids, nodes))
    ]


def _ranks(v: Tensor) -> Tensor:  # [n] -> [n] float64 ranks, ties averaged
    order = torch.argsort(v, stable=True)
    ranks = torch.empty_like(v, dtype=torch.float64)
    ranks[order] = torch.arange(len(v), dtype=torch.float64)
    for value in torch.unique(v):
        tied = v == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation in float64; NaN when either side is constant or there are fewer than 2 pairs."""
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if len(x) < 2:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denom if denom > 0 else math.nan


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return pearson(_ranks(x).tolist(), _ranks(y).tolist()) if len(x) >= 2 else math.nan


def sign_agreement(predicted: Sequence[float], actual: Sequence[float]) -> float:
    """Share of pairs whose signs agree (0 agrees only with 0); NaN for no pairs."""
    if not predicted:
        return math.nan
    p, a = torch.tensor(predicted).sign(), torch.tensor(actual).sign()
    return float((p == a).double().mean())


def agreement(interventions: Sequence[NodeIntervention], setting: str) -> dict[str, float]:
    """{'n', 'pearson', 'spearman', 'sign_agreement'} of predicted vs actual changes in one setting."""
    predicted = [i.predicted for i in interventions]
    actual = [i.actual[setting] for i in interventions]
    return {
        "n": len(predicted),
        "pearson": pearson(predicted, actual),
        "spearman": spearman(predicted, actual),
        "sign_agreement": sign_agreement(predicted, actual),
    }
