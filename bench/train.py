"""Transcoder training throughput against this machine's own matmul rate, measured in the same run.

  matmul FLOP/s      the three GEMM shapes of one dense training step ([n, d] @ [d, d_sae] and friends), timed bare
  dense ReLU + L1    tokens/s of interp.train's step at d_sae = 16 x d_model; MFU = tokens/s x 12 d d_sae / FLOP/s
                     (forward 4 d d_sae per token, backward twice that)
  TopK k=32 sparse   tokens/s of the sparse step (gathered decoder rows, sparse encoder gradient); ratio to dense
  encoder bound      TopK must compute every pre-activation (x @ W_enc, 2 d d_sae FLOPs per token): tokens/s of
                     that GEMM alone at d_sae = 8 x d_model, and the TopK step's rate as a fraction of it
  from shards        when $ATLAS_HOME holds train activation shards (`activations` with train_contexts > 0):
                     TopK training tokens/s reading them (fp16 Parquet -> shuffle buffer -> step)

The ratios above are float32 steps against float32 GEMMs; a last line gives the TopK step under bf16 autocast
(the default where bf16 is native, interp.model.bf16_fast) as a multiple of its float32 rate.

Synthetic activations with d_model 576 (SmolLM2) unless ATLAS_BENCH_D says otherwise; ATLAS_BENCH_STEPS sets the
timed steps per measurement (default 4).
"""

from __future__ import annotations

import os
import time

import torch

from interp.train import ShuffleBuffer, TrainConfig, Trainer
from interp.transcoder import EXPANSION_FACTOR, TranscoderConfig

D = int(os.environ.get("ATLAS_BENCH_D", "576"))
STEPS = int(os.environ.get("ATLAS_BENCH_STEPS", "4"))
BATCH = 4096


def _matmul_flops(n: int, d: int, d_sae: int) -> float:
    """FLOP/s of the dense step's GEMMs: x@W_enc, z@W_dec and their two backward products each."""
    a, w_enc, z, w_dec = (
        torch.randn(n, d),
        torch.randn(d, d_sae),
        torch.randn(n, d_sae),
        torch.randn(d_sae, d),
    )
    gy = torch.randn(n, d)
    ops = [lambda: a @ w_enc, lambda: z @ w_dec, lambda: gy @ w_dec.T, lambda: z.T @ gy, lambda: a.T @ z]
    for op in ops:
        op()
    t0 = time.perf_counter()
    for _ in range(STEPS):
        for op in ops:
            op()
    seconds = time.perf_counter() - t0
    return STEPS * 5 * 2 * n * d * d_sae / seconds


def _encoder_bound(n: int, d: int, d_sae: int) -> float:
    """Tokens/s of the encoder GEMM x @ W_enc alone: the floor of any step that needs every pre-activation."""
    a, w_enc = torch.randn(n, d), torch.randn(d, d_sae)
    a @ w_enc
    t0 = time.perf_counter()
    for _ in range(STEPS):
        a @ w_enc
    return STEPS * n / (time.perf_counter() - t0)


def _trainer(architecture: str, d_sae: int, bf16: bool = TrainConfig.bf16) -> Trainer:
    """A trainer of the default k, without the skip connection (as the step rates in the docs were measured)."""
    cfg = TrainConfig(batch_size=BATCH, train_tokens=10**9, bf16=bf16)
    tc_cfg = TranscoderConfig(d_in=D, d_sae=d_sae, d_out=D, architecture=architecture, skip=False)
    return Trainer(cfg, tc_cfg, torch.zeros(D), torch.zeros(D), 1.0, torch.randn(256, D))


def _tokens_per_s(trainer: Trainer, batches) -> float:
    trainer.step(*next(batches))  # warm-up (allocations, Adam state)
    t0 = time.perf_counter()
    for _ in range(STEPS):
        trainer.step(*next(batches))
    return STEPS * BATCH / (time.perf_counter() - t0)


def _synthetic():
    """Two fixed random batches, cycled (generated once, outside the timed steps)."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(BATCH, D, generator=g), torch.randn(BATCH, D, generator=g)) for _ in range(2)]
    while True:
        yield from batches


def _from_shards() -> float | None:
    from storage import activations as act_store

    try:
        from assets import settings
        from assets.resources import AtlasModel

        name = AtlasModel().model_name
        paths = act_store.shard_paths(name, settings.env_layers(name)[0], "train")
    except Exception:  # no database or no shards: skip this line
        return None

    def chunks():
        for p in paths:
            yield act_store.read_shard(p)

    first = act_store.read_shard(paths[0])
    d = first["x"].shape[1]
    cfg = TrainConfig(batch_size=BATCH, train_tokens=10**9)
    trainer = Trainer(
        cfg,
        TranscoderConfig.expanded(d, d, architecture="topk", skip=False),
        first["x"].mean(0),
        first["y"].mean(0),
        1.0,
        first["x"][:256],
    )
    t0 = time.perf_counter()
    buffer = ShuffleBuffer(BATCH, cfg.buffer_tokens, 0)
    n = 0
    for chunk in chunks():
        buffer.push(chunk["x"], chunk["y"])
        for x, y in buffer.release():
            trainer.step(x, y)
            n += BATCH
        if n > STEPS * BATCH:
            break
    return n / (time.perf_counter() - t0)


def main() -> None:
    torch.manual_seed(0)
    d_sae = 16 * D
    print(
        f"   threads {torch.get_num_threads()}, d_model {D}, d_sae {d_sae}, batch {BATCH} tokens, {STEPS} timed steps"
    )
    flops = _matmul_flops(BATCH, D, d_sae)
    print(f"   matmul rate (dense step GEMM shapes): {flops / 1e9:.1f} GFLOP/s")
    dense = _tokens_per_s(_trainer("relu", d_sae, bf16=False), _synthetic())  # float32, as the GEMMs
    mfu = dense * 12 * D * d_sae / flops
    print(f"   dense ReLU+L1 d_sae={d_sae}: {dense:,.0f} tokens/s, MFU {mfu:.2f}")
    sparse = _tokens_per_s(_trainer("topk", d_sae, bf16=False), _synthetic())
    print(f"   TopK k=32 sparse d_sae={d_sae}: {sparse:,.0f} tokens/s = {sparse / dense:.2f}x dense")
    bound = _encoder_bound(BATCH, D, EXPANSION_FACTOR * D)
    topk8 = _tokens_per_s(_trainer("topk", EXPANSION_FACTOR * D, bf16=False), _synthetic())
    print(
        f"   TopK k=32 d_sae={EXPANSION_FACTOR * D} (the default): {topk8:,.0f} tokens/s = {topk8 / bound:.2f} of the encoder-matmul "
        f"bound ({bound:,.0f} tokens/s for x @ W_enc alone)"
    )
    bf16 = _trainer("topk", EXPANSION_FACTOR * D, bf16=True)
    if bf16.use_bf16:
        rate = _tokens_per_s(bf16, _synthetic())
        print(
            f"   TopK d_sae={EXPANSION_FACTOR * D} under bf16 autocast (the default here): {rate:,.0f} tokens/s = {rate / topk8:.2f}x float32"
        )
    else:
        print("   TopK under bf16 autocast: skipped (no native bf16 matmuls here; training runs float32)")
    shards = _from_shards()
    if shards is None:
        print("   from shards: no activation shards under $ATLAS_HOME (run `make atlas` first)")
    else:
        print(
            f"   TopK k=32 d_sae=8*d_model from fp16 shards (read + shuffle + step): {shards:,.0f} tokens/s"
        )
