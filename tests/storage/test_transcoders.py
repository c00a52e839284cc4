"""storage.transcoders: weights + three tables written together, replaced on re-save, latest per layer listed,
clear errors for unknown ids and damaged files."""

from __future__ import annotations

import os

import polars as pl
import pytest
import torch

from interp.train import STATE_FILE, TrainState
from interp.transcoder import WEIGHTS_FILE, Transcoder, TranscoderConfig, TranscoderFileError
from storage import transcoders as tc_store
from storage.db import readers

METRICS = {"n_eval_tokens": 100, "l0": 3.0, "fvu": 0.1, "ce_clean": 3.0, "ce_spliced": 3.1, "ce_ablated": 4.0}


def _tc(layer: int, seed: int) -> Transcoder:
    torch.manual_seed(seed)
    cfg = TranscoderConfig(
        d_in=8, d_sae=16, d_out=8, architecture="relu", skip=False, model_name="toy", layer=layer
    )
    return Transcoder(cfg)


def _curve(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"step": list(range(1, n + 1)), "tokens": [i * 10 for i in range(1, n + 1)], "fvu": [0.5] * n}
    )


def _save(layer: int, seed: int, arch_tag: str = "relu", passed: bool = True, n_curve: int = 3) -> str:
    tid = tc_store.transcoder_id("toy", layer, arch_tag, 16)
    metrics = {**METRICS, "gate_passed": passed, "gate_reason": "" if passed else "fvu 0.9 > 0.3"}
    tc_store.save_transcoder(_tc(layer, seed), tid, {"seed": seed}, 1000, _curve(n_curve), metrics)
    return tid


def test_save_load_list_and_replace(atlas_home):
    tid = _save(1, seed=0)
    assert tid == "toy/L1/relu-16"
    x = torch.randn(4, 8)
    torch.testing.assert_close(tc_store.load_transcoder(tid)(x), _tc(1, 0)(x))
    assert tc_store.gate_status(tid) == (True, "")
    _save(1, seed=5, passed=False, n_curve=2)  # same id again: replaced, not duplicated
    for table, n in (("transcoders", 1), ("transcoder_metrics", 1), ("training_curves", 2)):
        assert readers.query(f"SELECT count(*) n FROM {table} WHERE transcoder_id = ?", [tid])["n"][0] == n
    torch.testing.assert_close(tc_store.load_transcoder(tid)(x), _tc(1, 5)(x))
    assert tc_store.gate_status(tid) == (False, "fvu 0.9 > 0.3")
    newer = _save(1, seed=1, arch_tag="topk")  # another transcoder for the same layer, saved later
    _save(3, seed=2)
    listed = tc_store.list_transcoders("toy")
    assert listed["layer"].to_list() == [1, 3] and listed["transcoder_id"][0] == newer
    assert tc_store.transcoder_row(tid)["config"] == {"seed": 5}


def test_unknown_and_damaged_transcoders_raise(atlas_home):
    tid = _save(2, seed=0)
    with pytest.raises(LookupError, match="materialize"):
        tc_store.load_transcoder("toy/L9/relu-16")
    assert tc_store.gate_status("toy/L9/relu-16")[0] is False
    weights = os.path.join(tc_store.transcoder_row(tid)["weights_path"], WEIGHTS_FILE)
    with open(weights, "r+b") as f:
        f.truncate(100)
    with pytest.raises(TranscoderFileError, match="corrupt"):
        tc_store.load_transcoder(tid)
    with pytest.raises(ValueError, match="Unknown metric"):
        tc_store.save_transcoder(_tc(2, 0), tid, {}, 1, _curve(1), {"bogus": 1.0})


def test_a_version_keeps_its_training_state_beside_the_weights(atlas_home):
    without = _save(2, seed=0)  # saved without a state (as versions trained before states were kept)
    with pytest.raises(LookupError, match="no saved training state"):
        tc_store.load_train_state(without)
    state = TrainState(
        step=7,
        tokens=700,
        scale=0.123456789,
        x_mean=torch.randn(8),
        y_mean=torch.randn(8),
        since_fired=torch.arange(16),
        adam={
            "W_enc": {
                "step": torch.tensor(7.0),
                "exp_avg": torch.randn(8, 16),
                "exp_avg_sq": torch.rand(8, 16),
            }
        },
        context_ids=torch.tensor([3, 5, 9]),
    )
    tid = tc_store.transcoder_id("toy", 2, "relu", 16, {"seed": 1})
    path = tc_store.save_transcoder(_tc(2, 1), tid, {}, 700, _curve(1), METRICS, state=state)
    assert sorted(os.listdir(path)) == ["cfg.json", "sae_weights.safetensors", STATE_FILE]
    back = tc_store.load_train_state(tid)
    assert (back.step, back.tokens, back.scale) == (7, 700, 0.123456789)
    for name in ("x_mean", "y_mean", "since_fired", "context_ids"):
        assert torch.equal(getattr(back, name), getattr(state, name)), name
    assert all(torch.equal(back.adam["W_enc"][k], v) for k, v in state.adam["W_enc"].items())
