"""Training: learns a known sparse map in the shape the caller asked for, resumes after a kill to the same weights
(and only with the same configs), rejects bad activations."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from interp.train import (
    SKIP_INITS,
    NonFiniteActivationsError,
    ShuffleBuffer,
    TrainConfig,
    least_squares_skip,
    train,
)
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


def _batches(n: int, rows: int = 250) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n batches (x [rows, D], y [rows, D]) of the teacher's map, in a fixed order."""
    teacher, g = _teacher(), torch.Generator().manual_seed(11)
    out = []
    for _ in range(n):
        x = torch.randn(rows, D, generator=g)
        with torch.no_grad():
            out.append((x, teacher(x)))
    return out


def _stepped(trainer, batches):
    for x, y in batches:
        trainer.step(x, y)
    return trainer


def _fresh_adam(state):
    """`state` with its optimizer state dropped: Adam as at step 0 (what a run that kept only the weights has)."""
    zero = {n: {k: torch.zeros_like(v) for k, v in st.items()} for n, st in state.adam.items()}
    return dataclasses.replace(state, adam=zero)


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_continuing_from_the_saved_state_reproduces_the_uninterrupted_run(architecture, tmp_path):
    from interp.train import Trainer, TrainState, _init_stats

    n, m = 40, 30  # relu resamples dead features at step 50: the counters must carry over too
    tc_cfg, batches = _tc_cfg(architecture=architecture), _batches(n + m)
    stats = _init_stats(torch.cat([x for x, _ in batches[:8]]), torch.cat([y for _, y in batches[:8]]))
    # one lr throughout, so both schedules agree; float32, since under bf16 autocast the saved form's rounding
    # (s folded into the decoder, b_pre into b_enc: 1 ulp) flips bf16 roundings, about 1e-3 apart after 30 steps
    const = {"lr_warmup_steps": 0, "lr_decay_frac": 0.0, "bf16": False}
    one_go = _stepped(Trainer(_cfg(train_tokens=(n + m) * 250, **const), tc_cfg, *stats), batches).finish()
    parent = _stepped(Trainer(_cfg(train_tokens=n * 250, **const), tc_cfg, *stats), batches[:n])
    parent.finish().save(str(tmp_path))  # what a version's folder holds: the weights and the state
    parent.train_state().save(str(tmp_path))
    saved = Transcoder.load(str(tmp_path)), TrainState.load(str(tmp_path))
    child_cfg = _cfg(train_tokens=m * 250, **const)
    child = _stepped(Trainer.continued(child_cfg, tc_cfg, *saved), batches[n:])
    assert (child.step_no, child.tokens) == (n + m, (n + m) * 250)
    for name, value in one_go.state_dict().items():
        torch.testing.assert_close(child.finish().state_dict()[name], value, atol=1e-5, rtol=1e-4, msg=name)
    # the optimizer state is what makes it exact: the same weights with Adam started afresh end elsewhere
    dropped = _stepped(Trainer.continued(child_cfg, tc_cfg, saved[0], _fresh_adam(saved[1])), batches[n:])
    assert (dropped.finish().W_dec - one_go.W_dec).abs().max() > 1e-2


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_a_continued_run_starts_where_its_parent_stopped_without_a_spike(architecture):
    data, tc_cfg = _data(), _tc_cfg(architecture=architecture)
    cfg = _cfg(train_tokens=30_000, log_every=1, lr_warmup_steps=20)
    parent = train(data, cfg, tc_cfg, progress=False)
    child = train(
        data,
        dataclasses.replace(cfg, seed=1),
        tc_cfg,
        progress=False,
        parent=(parent.transcoder, parent.state),
    )
    last = sum(r["loss"] for r in parent.curve[-5:]) / 5
    first = [r["loss"] for r in child.curve[:10]]
    assert child.curve[0]["step"] == 121 and child.curve[0]["tokens"] == 121 * 250
    assert child.train_tokens == 2 * 30_000 and child.start_tokens == 30_000
    assert max(first) < 1.1 * last  # the lr re-warms on the kept Adam moments: no jump
    assert child.curve[-1]["loss"] < last  # and more tokens help
    # Adam restarted from zero at full lr jumps at its first update
    spiked = train(
        data,
        dataclasses.replace(cfg, seed=1, lr_warmup_steps=0),
        tc_cfg,
        progress=False,
        parent=(parent.transcoder, _fresh_adam(parent.state)),
    )
    assert max(r["loss"] for r in spiked.curve[:3]) > 1.15 * last


def test_continuing_needs_the_parents_shape():
    parent = train(_data(n_chunks=2), _cfg(train_tokens=5000), _tc_cfg(), progress=False)
    for other in (_tc_cfg(k=3), _tc_cfg(d_sae=64), _tc_cfg(skip=False), _tc_cfg(architecture="relu")):
        with pytest.raises(ValueError, match="keeps its parent's shape"):
            train(_data(), _cfg(), other, progress=False, parent=(parent.transcoder, parent.state))


def test_a_continued_run_killed_and_resumed_ends_with_the_same_weights(tmp_path):
    data, tc_cfg = _data(), _tc_cfg()
    first = train(data, _cfg(train_tokens=10_000), tc_cfg, progress=False)
    parent = first.transcoder, first.state
    kept = {n: {k: v.clone() for k, v in st.items()} for n, st in first.state.adam.items()}
    cfg = _cfg(train_tokens=20_000, checkpoint_every=10)
    full = train(data, cfg, tc_cfg, progress=False, parent=parent)
    for (
        name,
        st,
    ) in kept.items():  # training from a state leaves it as it was (a parent can have two children)
        assert all(torch.equal(first.state.adam[name][k], v) for k, v in st.items()), name

    def kill_at_step_85(row):
        if row["step"] == 85:
            raise Killed

    ckpt = str(tmp_path / "ckpt.pt")
    with pytest.raises(Killed):
        train(data, cfg, tc_cfg, checkpoint_path=ckpt, on_log=kill_at_step_85, progress=False, parent=parent)
    assert 40 < torch.load(ckpt, weights_only=False)["layers"][0]["trainer"]["step"] < 85
    resumed = train(data, cfg, tc_cfg, checkpoint_path=ckpt, progress=False, parent=parent)
    for name, value in full.transcoder.state_dict().items():
        torch.testing.assert_close(
            resumed.transcoder.state_dict()[name], value, atol=1e-5, rtol=1e-5, msg=name
        )
    assert [r["step"] for r in resumed.curve] == [r["step"] for r in full.curve]
    assert resumed.train_tokens == full.train_tokens == 30_000


def test_least_squares_skip_recovers_a_linear_map_and_ignores_outliers_as_training_does():
    g = torch.Generator().manual_seed(0)
    A, c = torch.randn(D, D, generator=g), torch.randn(D, generator=g)
    x = torch.randn(4000, D, generator=g)
    y = x @ A.T + c
    W, b, residual = least_squares_skip(x, y, scale=2.0, outlier_norm=1e9)
    assert torch.allclose(W, A / 2.0, atol=1e-4) and torch.allclose(b, c / 2.0, atol=1e-4) and residual < 1e-4
    # one massive row: with training's outlier weights it barely moves the fit; unweighted it does
    x[0], y[0] = 100.0, 1e5
    weighted = least_squares_skip(x, y, scale=2.0, outlier_norm=4.0)[0]
    unweighted = least_squares_skip(x, y, scale=2.0, outlier_norm=1e9)[0]
    assert (weighted - A / 2.0).abs().max() < 0.05 < (unweighted - A / 2.0).abs().max()


def test_lstsq_skip_init_starts_from_the_linear_fit_and_a_zero_init_does_not():
    """On a target with a linear part, 'lstsq' starts W_skip at that part: the first logged FVU is lower, and
    an unknown init is a clear error."""
    teacher = _teacher()
    A = torch.randn(D, D, generator=torch.Generator().manual_seed(5))

    def data():
        g = torch.Generator().manual_seed(7)
        for _ in range(4):
            x = torch.randn(1000, D, generator=g)
            with torch.no_grad():
                y = teacher(x) + 10 * x @ A.T
            yield {"x": x, "y": y}

    tc_cfg = _tc_cfg(architecture="topk", skip=True, hook_name="h_in", layer=0)
    first = {}
    for init in SKIP_INITS:
        res = train(data, _cfg(train_tokens=5000, log_every=1, skip_init=init), tc_cfg, progress=False)
        first[init] = res.curve[0]["fvu"]
    assert first["lstsq"] < 0.5 * first["zero"]
    with pytest.raises(ValueError, match="skip_init must be one of"):
        _cfg(skip_init="random")
