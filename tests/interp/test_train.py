"""Training: learns a known sparse map in the shape the caller asked for, resumes after a kill to the same weights
(and only with the same configs), rejects bad activations."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from interp.train import NonFiniteActivationsError, ShuffleBuffer, TrainConfig, train
from interp.transcoder import Transcoder, TranscoderConfig

D, D_SAE = 16, 128  # the teacher has 64 features


def _teacher() -> Transcoder:
    """A known TopK(4) transcoder generating y from x: the target a student should recover."""
    torch.manual_seed(123)
    t = Transcoder(TranscoderConfig(d_in=D, d_sae=64, d_out=D, architecture="topk", k=4, skip=False))
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


def _tc_cfg(**kw) -> TranscoderConfig:
    return TranscoderConfig(**{"d_in": D, "d_sae": D_SAE, "d_out": D, "k": 4, **kw})


def _fvu(tc: Transcoder, data) -> float:
    chunk = next(iter(data()))
    with torch.no_grad():
        err = (chunk["y"] - tc(chunk["x"])).pow(2).sum()
    return (err / (chunk["y"] - chunk["y"].mean(0)).pow(2).sum()).item()


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_training_learns_a_sparse_map(architecture):
    data = _data()
    tc_cfg = _tc_cfg(architecture=architecture, hook_name="h_in", layer=0)
    res = train(data, _cfg(), tc_cfg, progress=False)
    untrained = Transcoder(tc_cfg)
    assert _fvu(res.transcoder, data) < 0.25 < _fvu(untrained, data)
    assert res.train_tokens == 60_000 and res.curve[-1]["step"] == 240
    assert res.curve[-1]["fvu"] < res.curve[0]["fvu"]
    assert res.transcoder.cfg.architecture == architecture and (res.transcoder.b_pre == 0).all()
    if architecture == "topk":
        assert res.curve[-1]["l0"] <= 4


@pytest.mark.parametrize(
    "shape",
    [
        {"architecture": "topk", "d_sae": 96, "k": 3, "skip": False},
        {"architecture": "relu", "d_sae": 48, "k": None, "skip": True},
    ],
)
def test_the_trained_transcoder_has_the_shape_the_caller_gave(shape):
    tc_cfg = TranscoderConfig(d_in=D, d_out=D, hook_name="h_in", layer=3, **shape)
    res = train(_data(n_chunks=2), _cfg(train_tokens=5000), tc_cfg, progress=False)
    tc = res.transcoder
    assert dataclasses.asdict(tc.cfg) == dataclasses.asdict(tc_cfg)
    assert tc.W_enc.shape == (D, shape["d_sae"]) and (tc.W_skip is not None) == shape["skip"]
    if shape["architecture"] == "topk":
        assert max(r["l0"] for r in res.curve) <= 3


def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    data = _data()
    cfg, tc_cfg = _cfg(train_tokens=20_000, checkpoint_every=10), _tc_cfg()
    full = train(data, cfg, tc_cfg, progress=False)
    ckpt = _killed_run(data, cfg, tc_cfg, tmp_path)
    saved = torch.load(ckpt, weights_only=False)  # the last checkpoint before the kill: 10 chunks in
    assert saved["consumed"] == 10 and 0 < saved["layers"][0]["trainer"]["step"] < 45
    resumed = train(data, cfg, tc_cfg, checkpoint_path=ckpt, progress=False)
    for name, value in full.transcoder.state_dict().items():
        torch.testing.assert_close(
            resumed.transcoder.state_dict()[name], value, atol=1e-5, rtol=1e-5, msg=name
        )
    assert [r["step"] for r in resumed.curve] == [r["step"] for r in full.curve]
    assert resumed.curve[-1]["loss"] == pytest.approx(full.curve[-1]["loss"], rel=1e-4)


class Killed(Exception):
    pass


def _killed_run(data, cfg: TrainConfig, tc_cfg: TranscoderConfig, tmp_path) -> str:
    """The checkpoint of a run killed at step 45 (its last save: 10 chunks in)."""

    def kill_at_step_45(row):
        if row["step"] == 45:
            raise Killed

    ckpt = str(tmp_path / "ckpt.pt")
    with pytest.raises(Killed):
        train(data, cfg, tc_cfg, checkpoint_path=ckpt, on_log=kill_at_step_45, progress=False)
    return ckpt


def test_a_checkpoint_resumes_only_with_the_configs_it_was_made_with(tmp_path):
    data, cfg, tc_cfg = _data(), _cfg(train_tokens=20_000, checkpoint_every=10), _tc_cfg()
    ckpt = _killed_run(data, cfg, tc_cfg, tmp_path)

    def first_logged_step(cfg: TrainConfig, tc_cfg: TranscoderConfig) -> int:
        copy = str(tmp_path / "copy.pt")
        shutil.copy(ckpt, copy)
        steps = []
        train(
            data, cfg, tc_cfg, checkpoint_path=copy, on_log=lambda r: steps.append(r["step"]), progress=False
        )
        return steps[0]

    assert first_logged_step(cfg, tc_cfg) > 5  # resumed
    for other_cfg, other_tc_cfg in [
        (cfg, _tc_cfg(k=3)),
        (cfg, _tc_cfg(skip=False)),
        (cfg, _tc_cfg(layer=1)),
        (dataclasses.replace(cfg, lr=2e-2), tc_cfg),
    ]:
        assert first_logged_step(other_cfg, other_tc_cfg) == 5  # started over: log_every 5


def test_nan_activations_raise_a_clear_error():
    with pytest.raises(NonFiniteActivationsError, match="NaN"):
        train(_data(nan_at=2), _cfg(), _tc_cfg(), progress=False)


def test_empty_stream_and_wrong_width_raise():
    with pytest.raises(ValueError, match="empty"):
        train(lambda: iter(()), _cfg(), _tc_cfg(), progress=False)
    with pytest.raises(ValueError, match="wide"):
        train(_data(), _cfg(), _tc_cfg(d_in=D + 1), progress=False)


def test_shuffle_buffer_yields_every_row_once_and_drains_at_the_end():
    rows = torch.arange(1000, dtype=torch.float32)[:, None].repeat(1, 2)
    buf, out = ShuffleBuffer(batch_size=50, capacity=400, seed=0), []
    for i in range(0, 1000, 100):
        buf.push(rows[i : i + 100], rows[i : i + 100])
        out += [x[:, 0] for x, _ in buf.release()]
    assert buf.held >= 200  # half the buffer stays to mix with what comes next
    out += [x[:, 0] for x, _ in buf.release(final=True)]
    seen = torch.cat(out)
    assert seen.numel() == 1000 and seen.unique().numel() == 1000  # every row once, none twice
    assert not torch.equal(seen[:50], torch.arange(50.0))  # shuffled


def _stream_setup(tiny_model):
    from interp.activations import harvest
    from interp.model import mlp_hooks

    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(3, 60, (64, 16), generator=g)
    tokens[:, 0] = 1  # BOS
    ids, batch, layers = torch.arange(64), 8, [0, 1, 2]

    def stream(start, layers=layers):  # item i = forward batch i: every layer from one pass
        for b in harvest(tiny_model, tokens[start * batch :], ids[start * batch :], layers, batch):
            yield b.acts

    d = tiny_model.cfg.d_model
    cfg = _cfg(batch_size=32, buffer_tokens=128, train_tokens=20 * 32, log_every=5)
    tc_cfgs = {
        layer: TranscoderConfig(d_in=d, d_sae=64, d_out=d, k=4, hook_name=mlp_hooks(layer)[0], layer=layer)
        for layer in layers
    }
    return stream, {layer: cfg for layer in layers}, tc_cfgs


def test_streaming_every_layer_equals_training_each_layer_alone(tiny_model):
    from interp.train import train_layers

    stream, cfgs, tc_cfgs = _stream_setup(tiny_model)
    joint = train_layers(stream, cfgs, tc_cfgs, progress=False)
    for layer, res in joint.items():
        # the same layer alone: its own harvest (a forward pass that stops after it), the one-layer trainer
        chunks = [{"x": a[layer][0], "y": a[layer][1]} for a in stream(0, layers=[layer])]
        alone = train(lambda chunks=chunks: iter(chunks), cfgs[layer], tc_cfgs[layer], progress=False)
        assert res.train_tokens == alone.train_tokens == 20 * 32
        for name, value in alone.transcoder.state_dict().items():
            assert torch.equal(res.transcoder.state_dict()[name], value), (layer, name)
    # and the layers really are different transcoders
    assert not torch.equal(joint[0].transcoder.W_enc, joint[2].transcoder.W_enc)


def test_streaming_run_killed_and_resumed_ends_with_the_same_weights(tiny_model, tmp_path):
    from interp.train import train_layers

    stream, cfgs, tc_cfgs = _stream_setup(tiny_model)
    full = train_layers(stream, cfgs, tc_cfgs, progress=False)

    class Killed(Exception):
        pass

    def kill(layer, row):
        if layer == 2 and row["step"] == 15:
            raise Killed

    ckpt = str(tmp_path / "stream.pt")
    with pytest.raises(Killed):
        train_layers(stream, cfgs, tc_cfgs, ckpt, checkpoint_every=2, on_log=kill, progress=False)
    assert torch.load(ckpt, weights_only=False)["consumed"] > 0
    skipped = []

    def counting_stream(start):
        skipped.append(start)
        return stream(start)

    resumed = train_layers(counting_stream, cfgs, tc_cfgs, ckpt, checkpoint_every=2, progress=False)
    assert skipped[0] > 0  # forward passes already done are not run again
    for layer in cfgs:
        for name, value in full[layer].transcoder.state_dict().items():
            assert torch.equal(resumed[layer].transcoder.state_dict()[name], value), (layer, name)
        assert [r["step"] for r in resumed[layer].curve] == [r["step"] for r in full[layer].curve]
