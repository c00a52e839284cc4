"""Held-out FVU at equal training tokens: this project's TopK transcoder trainer against eai-sparsify's.

Both train a TopK transcoder (k = 32, d_sae = 8 x d_model) on the SAME activations of one layer of the embedded
model: a seeded, source-stratified sample of training contexts (the `transcoders` asset's stream, harvested once
here), in the same shuffled batches of 1,024 tokens. sparsify runs with its own defaults otherwise (its signum
optimizer with schedule-free averaging, its lr rule, zero-initialized decoder, no skip connection, no AuxK) and is
read at its averaged weights, as its trainer saves them. Both are scored on 256 held-out contexts by one function.

Needs a built atlas (contexts in $ATLAS_HOME) and the optional `bench` extra (`pip install -e ".[bench]"`); the
line says "skipped" otherwise. ATLAS_BENCH_LAYER (default 8) and ATLAS_BENCH_TOKENS (default: the training
budget) choose the layer and the token count; ATLAS_BENCH_LRS="4e-3,1e-3" adds our trainer at other learning rates
(held-out FVU and effective L0: the sweep behind the default lr), ATLAS_BENCH_SKIP_INITS="lstsq" at other skip
path initialisations (TrainConfig.skip_init).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import torch
from torch import Tensor

from interp.activations import harvest
from interp.train import ShuffleBuffer, TrainConfig, train_layers
from interp.transcoder import EXPANSION_FACTOR, TranscoderConfig

LAYER = int(os.environ.get("ATLAS_BENCH_LAYER", "8"))
TOKENS = int(os.environ.get("ATLAS_BENCH_TOKENS", str(TrainConfig.train_tokens)))
K, BATCH, EVAL_CONTEXTS = 32, 1024, 256


def _activations(model, split: str, n_ctx: int, seed: int) -> tuple[Tensor, Tensor]:
    """x, y [n_tokens, d_model] of LAYER on a stratified sample of `split` contexts (float32 forward passes)."""
    from storage import corpus as corpus_store

    ids = corpus_store.sample_context_ids(split, n_ctx, seed)
    tokens = corpus_store.contexts_by_id(ids)
    xs, ys = [], []
    for b in harvest(model, tokens, torch.tensor(ids), [LAYER], batch_size=16):
        x, y = b.acts[LAYER]
        xs.append(x.half())
        ys.append(y.half())
    return torch.cat(xs), torch.cat(ys)


def _batches(x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
    """The shuffled float32 batches both trainers see, in the same order."""
    buffer = ShuffleBuffer(BATCH, capacity=x.shape[0], seed=0)
    buffer.push(x, y)
    return list(buffer.release(final=True))


def fvu(predict: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> float:
    """sum ||y - predict(x)||^2 / sum ||y - mean y||^2 over held-out tokens, in float64 sums."""
    err, y64 = 0.0, y.double()
    with torch.no_grad():
        for i in range(0, x.shape[0], 4096):
            err += (y64[i : i + 4096] - predict(x[i : i + 4096].float()).double()).pow(2).sum().item()
    return err / (y64 - y64.mean(0)).pow(2).sum().item()


def effective_l0(tc, x: Tensor) -> float:
    """Mean number of features with z > 0 per held-out token (TopK keeps at most k; a collapse shows here)."""
    with torch.no_grad():
        active = sum(int((tc.encode(x[i : i + 4096].float()) > 0).sum()) for i in range(0, len(x), 4096))
    return active / len(x)


def _ours(
    batches, d: int, lr: float = TrainConfig.lr, skip_init: str = TrainConfig.skip_init
) -> tuple[Callable[[Tensor], Tensor], float]:
    cfg = TrainConfig(
        lr=lr, batch_size=BATCH, train_tokens=len(batches) * BATCH, checkpoint_every=0, skip_init=skip_init
    )
    tc_cfg = TranscoderConfig.expanded(d, d, architecture="topk", k=K)  # with the skip connection
    t0 = time.perf_counter()
    res = train_layers(
        lambda start: ({0: b} for b in batches[start:]), {0: cfg}, {0: tc_cfg}, progress=False
    )[0]
    return res.transcoder, time.perf_counter() - t0


def _sparsify(batches, d: int) -> tuple[Callable[[Tensor], Tensor], float]:
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    torch.manual_seed(0)
    coder = SparseCoder(
        d, SparseCoderConfig(k=K, num_latents=EXPANSION_FACTOR * d, transcode=True), "cpu", torch.float32
    )
    lr = 5e-3 / math.sqrt(coder.num_latents / 2**14)  # sparsify's default rule for its default optimizer
    opt = ScheduleFreeWrapper(SignSGD([{"params": coder.parameters(), "lr": lr}]), momentum=0.95)
    opt.train()
    t0 = time.perf_counter()
    x0, y0 = batches[0]
    with torch.no_grad():  # its first-step initialization: centred pre-activations, b_dec = mean output
        coder.encoder.bias.copy_(-x0.mean(0) @ coder.encoder.weight.T)
        coder.b_dec.copy_(y0.mean(0))
    for x, y in batches:
        coder(x=x, y=y).fvu.backward()
        opt.step()
        opt.zero_grad()
    opt.eval()  # the averaged weights, which its trainer saves
    return (lambda x: coder(x=x).sae_out), time.perf_counter() - t0


def main() -> None:
    try:
        import sparsify  # noqa: F401
    except ImportError:
        print('   FVU vs eai-sparsify: skipped (install the bench extra: pip install -e ".[bench]")')
        return
    from assets.resources import AtlasModel
    from storage import corpus as corpus_store

    try:
        ctx_len = corpus_store.context_length()
    except Exception as e:  # no atlas yet
        print(f"   FVU vs eai-sparsify: skipped (no contexts in the atlas: run `make atlas` first; {e})")
        return
    model = AtlasModel().load()  # $ATLAS_MODEL on $ATLAS_DEVICE, as the build
    x, y = _activations(model, "train", math.ceil(TOKENS / (ctx_len - 1)), seed=0)
    x_eval, y_eval = _activations(model, "eval", EVAL_CONTEXTS, seed=1)
    batches = _batches(x[:TOKENS], y[:TOKENS])
    d = x.shape[1]
    ours, ours_s = _ours(batches, d)
    theirs, theirs_s = _sparsify(batches, d)
    n = len(batches) * BATCH
    print(
        f"   layer {LAYER}, TopK k={K}, d_sae={EXPANSION_FACTOR * d}, {n:,} training tokens, {x_eval.shape[0]:,} held-out tokens"
    )
    print(
        f"   held-out FVU: ours {fvu(ours, x_eval, y_eval):.3f} (L0 {effective_l0(ours, x_eval):.1f}, {ours_s:.0f} s), "
        f"eai-sparsify {fvu(theirs, x_eval, y_eval):.3f} ({theirs_s:.0f} s)"
    )
    for init in [v for v in os.environ.get("ATLAS_BENCH_SKIP_INITS", "").split(",") if v]:
        tc, seconds = _ours(batches, d, skip_init=init)
        print(
            f"   ours with skip_init {init}: held-out FVU {fvu(tc, x_eval, y_eval):.3f}, "
            f"L0 {effective_l0(tc, x_eval):.1f} ({seconds:.0f} s)"
        )
    for lr in [float(v) for v in os.environ.get("ATLAS_BENCH_LRS", "").split(",") if v]:
        tc, _ = _ours(batches, d, lr)
        print(
            f"   ours at lr {lr:g}: held-out FVU {fvu(tc, x_eval, y_eval):.3f}, L0 {effective_l0(tc, x_eval):.1f}"
        )
