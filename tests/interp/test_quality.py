"""The blocking gate fails broken transcoders — random, barely trained, another layer's — and passes a trained one
with its default thresholds; goals are separate warnings."""

from __future__ import annotations

import pytest
import torch

from interp.activations import harvest
from interp.evals import evaluate_each
from interp.model import mlp_hooks
from interp.quality import Thresholds, gate, goal_misses, mlp_matters
from interp.train import TrainConfig, train
from interp.transcoder import Transcoder, TranscoderConfig


def _tokens(n, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(3, 60, (n, 24), generator=g)
    t[:, 0] = 1
    return t


@pytest.fixture(scope="module")
def trained(tiny_model):
    """Layer 1 and layer 2 transcoders trained for 600 steps and for 10, on the tiny model's activations."""
    tokens = _tokens(160, seed=0)
    acts = list(harvest(tiny_model, tokens, torch.arange(160), [1, 2], batch_size=16))
    d = tiny_model.cfg.d_model
    out = {}
    for layer in (1, 2):
        chunks = [{"x": b.acts[layer][0], "y": b.acts[layer][1]} for b in acts]
        tc_cfg = TranscoderConfig.expanded(d, d, k=8, hook_name=mlp_hooks(layer)[0], layer=layer)
        for steps in (600, 10):
            cfg = TrainConfig(batch_size=128, buffer_tokens=1024, train_tokens=128 * steps)
            out[layer, steps] = train(lambda chunks=chunks: iter(chunks), cfg, tc_cfg, progress=False)
    return out


def _metrics(model, tc, ref):
    """Held-out metrics of `tc` spliced in at layer 1; the layer's mean and massive threshold come from `ref`, the
    run trained on layer 1 (they describe the layer's data, not the transcoder)."""
    tokens = _tokens(16, seed=1)
    massive = {1: (ref.y_mean, 4 * ref.scale)}
    return evaluate_each(model, {1: tc}, tokens, {1: ref.y_mean}, massive, batch_size=8)[1]


def test_gate_passes_a_trained_transcoder_and_fails_broken_ones(tiny_model, trained):
    t, ref = Thresholds(), trained[1, 600]
    good = _metrics(tiny_model, ref.transcoder, ref)
    assert gate(good, t) == (True, ""), good
    broken = {
        "random": Transcoder(ref.transcoder.cfg),  # same shape, freshly initialized
        "10 steps": trained[1, 10].transcoder,
        "layer 2's": trained[2, 600].transcoder,  # spliced in at layer 1
    }
    for name, tc in broken.items():
        m = _metrics(tiny_model, tc, ref)
        passed, reason = gate(m, t)
        assert not passed and "fvu_typical" in reason, (name, m["fvu_typical"], good["fvu_typical"])


def test_ce_recovered_blocks_only_where_the_mlp_matters():
    t = Thresholds()
    base = {"fvu_typical": 0.3, "ce_clean": 3.0, "l0": 20.0, "dead_frac": 0.01}
    matters = {**base, "ce_ablated": 3.5, "ce_spliced": 3.4, "ce_recovered": 0.2}
    assert gate(matters, t) == (False, "ce_recovered 0.200 < 0.5")
    noise = {**base, "ce_ablated": 3.02, "ce_spliced": 3.03, "ce_recovered": -0.5}  # a ratio of tiny numbers
    assert gate(noise, t) == (True, "")
    assert gate({**noise, "ce_recovered": float("nan")}, t)[0] is False
    assert gate({**noise, "fvu_typical": float("nan")}, t)[0] is False


def test_goals_are_warnings_listed_with_their_values():
    t = Thresholds()
    m = {
        "fvu_typical": 0.3,
        "ce_clean": 3.0,
        "ce_ablated": 3.5,
        "ce_recovered": 0.85,
        "l0": 40.0,
        "dead_frac": 0.1,
    }
    assert gate(m, t)[0]
    assert goal_misses(m, t) == ["CE recovered 0.850 < 0.90", "L0 40.0 > 32", "dead 10.00% > 5%"]
    assert goal_misses({**m, "ce_recovered": 0.95, "l0": 32.0, "dead_frac": 0.05}, t) == []
    # a layer whose MLP does not matter (mean ablation costs 0.05 nats < 0.1) carries no goal but the FVU one
    assert goal_misses({**m, "ce_ablated": 3.05}, t) == []
    assert goal_misses({**m, "ce_ablated": 3.05, "fvu": 0.97}, t) == ["FVU 0.970 > 0.9"]
    assert goal_misses({**m, "fvu": 0.97}, t)[0] == "FVU 0.970 > 0.9"


def test_goals_on_stored_metrics_skip_missing_ones_and_float32_rounding():
    """The app reads metrics back from float32 columns, some not evaluated (None): a missing metric misses no goal
    and an MLP not yet ablated is neither mattering nor not; a goal met exactly still reads as met."""
    t = Thresholds()
    assert mlp_matters({"ce_clean": 3.0, "ce_ablated": None}, t) is None
    assert goal_misses({"fvu": None, "ce_clean": 3.0, "ce_ablated": None, "l0": 99.0}, t) == []
    stored = {
        "ce_clean": 3.0,
        "ce_ablated": 4.0,
        "fvu": 0.9,
        "ce_recovered": 0.9,
        "l0": 32.0,
        "dead_frac": 0.05,
    }
    as_float32 = {k: float(torch.tensor(v, dtype=torch.float32)) for k, v in stored.items()}
    assert as_float32["dead_frac"] > 0.05 and as_float32["ce_recovered"] < 0.9  # what the database hands back
    assert goal_misses(as_float32, t) == []
    assert goal_misses({**as_float32, "ce_recovered": None, "dead_frac": 0.06}, t) == ["dead 6.00% > 5%"]
