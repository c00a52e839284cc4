import pytest
import torch

from interp.activations import NonFiniteActivationError, check_finite, harvest
from interp.model import mlp_hooks


def test_one_pass_harvest_matches_separate_runs_and_drops_bos(tiny_model):
    torch.manual_seed(0)
    tokens = torch.randint(3, tiny_model.cfg.d_vocab, (5, 9))
    tokens[:, 0] = 1
    ids = torch.arange(100, 105)
    batches = list(harvest(tiny_model, tokens, ids, layers=[0, 2], batch_size=2))
    assert [b.context_id.shape[0] for b in batches] == [16, 16, 8]
    cid = torch.cat([b.context_id for b in batches])
    pos = torch.cat([b.position for b in batches])
    assert pos.min() == 1 and pos.max() == 8
    for layer in (0, 2):
        x = torch.cat([b.acts[layer][0] for b in batches])
        y = torch.cat([b.acts[layer][1] for b in batches])
        _, cache = tiny_model.run_with_cache(tokens)  # full forward, no stop_at_layer
        hx, hy = mlp_hooks(layer)
        torch.testing.assert_close(x, cache[hx][cid - 100, pos], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y, cache[hy][cid - 100, pos], atol=1e-5, rtol=1e-5)


def test_nan_activations_are_a_clear_error():
    with pytest.raises(NonFiniteActivationError, match="Layer 3 MLP input has 1 NaN"):
        check_finite(torch.tensor([1.0, float("nan")]), "Layer 3 MLP input")


def test_layer_out_of_range_is_rejected_before_any_forward(tiny_model):
    with pytest.raises(ValueError, match="out of range"):
        next(harvest(tiny_model, torch.ones(1, 4, dtype=torch.long), torch.zeros(1), layers=[7]))
