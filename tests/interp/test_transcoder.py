"""The transcoder module: sparse TopK gradients, SAELens file compatibility, the paper's checkpoint format,
and clear errors for bad files."""

from __future__ import annotations

import json
import os

import pytest
import torch

from interp.transcoder import (
    WEIGHTS_FILE,
    Transcoder,
    TranscoderConfig,
    TranscoderFileError,
    load_paper_checkpoint,
)


def _random_tc(architecture="relu", skip=False, d_in=12, d_sae=48, d_out=12, k=5, seed=0) -> Transcoder:
    torch.manual_seed(seed)
    cfg = TranscoderConfig(
        d_in=d_in,
        d_sae=d_sae,
        d_out=d_out,
        architecture=architecture,
        k=k if architecture == "topk" else None,
        skip=skip,
        hook_name="blocks.3.ln2.hook_normalized",
        hook_name_out="blocks.3.hook_mlp_out",
        model_name="toy",
        layer=3,
    )
    tc = Transcoder(cfg)
    with torch.no_grad():
        for p in tc.parameters():
            p.normal_(0, 0.3)
    return tc


def test_sparse_topk_gradients_equal_dense_autograd():
    tc = _random_tc("topk", skip=True)
    x, target = torch.randn(20, 12), torch.randn(20, 12)
    vals, idx, _ = tc.encode_topk_sparse(x)
    ((tc.decode_sparse(vals, idx, x) - target) ** 2).sum().backward()
    sparse = {n: p.grad.clone() for n, p in tc.named_parameters() if n != "b_pre"}
    tc.zero_grad()
    ((tc(x) - target) ** 2).sum().backward()
    for name, grad in sparse.items():
        torch.testing.assert_close(grad, getattr(tc, name).grad, atol=1e-4, rtol=1e-4, msg=name)
    assert (sparse["W_enc"] != 0).any(0).sum() < 48  # only selected features got encoder gradient


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_encode_active_is_encode_as_a_sparse_tensor(architecture):
    tc = _random_tc(architecture)
    x = torch.randn(30, 12)
    z = tc.encode_active(x)
    assert z.is_sparse and z.is_coalesced() and z.shape == (30, 48)
    assert torch.equal(z.to_dense(), tc.encode(x))
    assert (z.values() > 0).all()  # only the active entries are stored


def test_fold_b_pre_keeps_the_function():
    tc = _random_tc("topk")
    x = torch.randn(7, 12)
    before = tc(x).detach()
    tc.fold_b_pre()
    assert (tc.b_pre == 0).all()
    torch.testing.assert_close(tc(x).detach(), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture,skip", [("relu", False), ("relu", True), ("topk", False)])
def test_saelens_loads_our_files_and_computes_the_same(tmp_path, architecture, skip):
    from sae_lens import SAE

    tc = _random_tc(architecture, skip)
    tc.save(str(tmp_path))
    sae = SAE.load_from_disk(str(tmp_path))
    x = torch.randn(9, 12)
    with torch.no_grad():
        torch.testing.assert_close(sae(x), tc(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.encode(x), tc.encode(x), atol=1e-5, rtol=1e-5)
    meta = json.load(open(tmp_path / "cfg.json"))["metadata"]
    assert meta["hook_name_out"] == "blocks.3.hook_mlp_out"
    back = Transcoder.load(str(tmp_path))
    assert back.cfg.architecture == architecture and back.cfg.skip == skip and back.cfg.layer == 3
    torch.testing.assert_close(back(x), tc(x), atol=1e-5, rtol=1e-5)


def test_paper_checkpoint_loader(tmp_path):
    """The transcoder_circuits format: z = ReLU((x - b_dec) W_enc + b_enc), y = z W_dec + b_dec_out."""
    g = torch.Generator().manual_seed(0)
    d_in, d_sae = 10, 40
    sd = {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g),
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
        "b_dec_out": torch.randn(d_in, generator=g),
    }
    cfg = {
        "hook_point": "blocks.8.ln2.hook_normalized",
        "hook_point_layer": 8,
        "out_hook_point": "blocks.8.hook_mlp_out",
    }
    path = tmp_path / "final_sparse_autoencoder_gpt2-small_blocks.8.ln2.hook_normalized_24576.pt"
    torch.save({"cfg": cfg, "state_dict": sd}, path)
    tc = load_paper_checkpoint(str(path))
    x = torch.randn(6, d_in, generator=g)
    want = torch.relu((x - sd["b_dec"]) @ sd["W_enc"] + sd["b_enc"]) @ sd["W_dec"] + sd["b_dec_out"]
    torch.testing.assert_close(tc(x).detach(), want, atol=1e-4, rtol=1e-4)
    assert tc.cfg.layer == 8 and tc.cfg.hook_name_out == "blocks.8.hook_mlp_out"
    del sd["b_dec_out"]
    torch.save({"cfg": cfg, "state_dict": sd}, path)
    with pytest.raises(TranscoderFileError, match="b_dec_out"):
        load_paper_checkpoint(str(path))


def test_missing_corrupt_and_nan_files_raise_clear_errors(tmp_path):
    tc = _random_tc()
    tc.save(str(tmp_path))
    weights = tmp_path / WEIGHTS_FILE
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TranscoderFileError, match="corrupt"):
        Transcoder.load(str(tmp_path))
    os.remove(weights)
    with pytest.raises(TranscoderFileError, match="missing"):
        Transcoder.load(str(tmp_path))
    with torch.no_grad():
        tc.W_dec[0, 0] = float("nan")
    tc.save(str(tmp_path))
    with pytest.raises(TranscoderFileError, match="NaN"):
        Transcoder.load(str(tmp_path))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="architecture"):
        TranscoderConfig(d_in=4, d_sae=8, d_out=4, architecture="gated")
    with pytest.raises(ValueError, match="k"):
        TranscoderConfig(d_in=4, d_sae=8, d_out=4, architecture="topk", k=9)
