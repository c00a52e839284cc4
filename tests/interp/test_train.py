"""Training: learns a known sparse map, resumes after a kill to the same weights, rejects bad activations."""

from __future__ import annotations

import pytest
import torch

from interp.train import NonFiniteActivationsError, TrainConfig, shuffled_batches, train
from interp.transcoder import Transcoder, TranscoderConfig

D, D_SAE = 16, 128  # the teacher has 64 features


def _teacher() -> Transcoder:
    """A known TopK(4) transcoder generating y from x: the target a student should recover."""
    torch.manual_seed(123)
    t = Transcoder(TranscoderConfig(d_in=D, d_sae=64, d_out=D, architecture="topk", k=4))
    with torch.no_grad():
        t.W_dec.mul_(30.0)
        t.b_dec.normal_()
    return t


def _data(n_chunks=6, rows=1000, nan_at=None):
    teacher = _teacher()

    def chunks():
        g = torch.Generator().manual_seed(7)
        for i in range(n_chunks):
            x = torch.randn(rows, D, generator=g)
            with torch.no_grad():
                y = teacher(x)
            if i == nan_at:
                x[3, 2] = float("nan")
            yield {"x": x, "y": y}

    return chunks


def _cfg(**kw) -> TrainConfig:
    base = dict(
        d_sae=D_SAE,
        k=4,
        batch_size=250,
        buffer_tokens=2000,
        train_tokens=60_000,
        lr=1e-2,
        lr_warmup_steps=5,
        log_every=5,
        dead_window_tokens=5_000,
        aux_k=8,
        l1_coefficient=1e-3,
        l1_warmup_steps=20,
    )
    return TrainConfig(**{**base, **kw})


def _fvu(tc: Transcoder, data) -> float:
    chunk = next(iter(data()))
    with torch.no_grad():
        err = (chunk["y"] - tc(chunk["x"])).pow(2).sum()
    return (err / (chunk["y"] - chunk["y"].mean(0)).pow(2).sum()).item()


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_training_learns_a_sparse_map(architecture):
    data = _data()
    tc_cfg = TranscoderConfig(d_in=D, d_sae=D_SAE, d_out=D, hook_name="h_in", layer=0)
    res = train(data, _cfg(architecture=architecture), tc_cfg, progress=False)
    untrained = Transcoder(tc_cfg)
    assert _fvu(res.transcoder, data) < 0.25 < _fvu(untrained, data)
    assert res.train_tokens == 60_000 and res.curve[-1]["step"] == 240
    assert res.curve[-1]["fvu"] < res.curve[0]["fvu"]
    assert res.transcoder.cfg.architecture == architecture and (res.transcoder.b_pre == 0).all()
    if architecture == "topk":
        assert res.curve[-1]["l0"] <= 4


def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    data = _data()
    tc_cfg = TranscoderConfig(d_in=D, d_sae=D_SAE, d_out=D)
    cfg = _cfg(train_tokens=20_000, checkpoint_every=10)
    full = train(data, cfg, tc_cfg, progress=False)

    class Killed(Exception):
        pass

    def kill_at_step_45(row):
        if row["step"] == 45:
            raise Killed

    ckpt = str(tmp_path / "ckpt.pt")
    with pytest.raises(Killed):
        train(data, cfg, tc_cfg, checkpoint_path=ckpt, on_log=kill_at_step_45, progress=False)
    assert torch.load(ckpt, weights_only=False)["step"] == 40  # last checkpoint before the kill
    resumed = train(data, cfg, tc_cfg, checkpoint_path=ckpt, progress=False)
    for name, value in full.transcoder.state_dict().items():
        torch.testing.assert_close(
            resumed.transcoder.state_dict()[name], value, atol=1e-5, rtol=1e-5, msg=name
        )
    assert [r["step"] for r in resumed.curve] == [r["step"] for r in full.curve]
    assert resumed.curve[-1]["loss"] == pytest.approx(full.curve[-1]["loss"], rel=1e-4)


def test_nan_activations_raise_a_clear_error():
    with pytest.raises(NonFiniteActivationsError, match="NaN"):
        train(_data(nan_at=2), _cfg(), TranscoderConfig(d_in=D, d_sae=D_SAE, d_out=D), progress=False)


def test_empty_stream_and_wrong_width_raise():
    with pytest.raises(ValueError, match="empty"):
        train(lambda: iter(()), _cfg(), TranscoderConfig(d_in=D, d_sae=D_SAE, d_out=D), progress=False)
    with pytest.raises(ValueError, match="wide"):
        train(_data(), _cfg(), TranscoderConfig(d_in=D + 1, d_sae=D_SAE, d_out=D), progress=False)


def test_shuffle_buffer_yields_every_row_once_per_epoch():
    rows = torch.arange(1000, dtype=torch.float32)[:, None].repeat(1, 2)

    def chunks():
        for i in range(0, 1000, 100):
            yield {"x": rows[i : i + 100], "y": rows[i : i + 100]}

    it = shuffled_batches(chunks, batch_size=50, buffer_tokens=400, seed=0)
    seen = torch.cat([next(it)[0][:, 0] for _ in range(16)])  # 800 rows: within the first epoch
    assert seen.unique().numel() == 800  # no row twice
    assert not torch.equal(seen[:50], torch.arange(50.0))  # shuffled
