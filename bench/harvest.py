"""Harvest throughput against a bare truncated forward pass on the same batches, plus peak memory.

Both loops run the embedded model on the same real-text contexts, stopping after the highest default layer;
the harvest loop also caches x/y of every default layer and writes fp16 Parquet shards (to a temp folder)
exactly as the `activations` asset does. Ratio = harvest tokens/s / bare tokens/s (goal >= 0.85). Then whole
forward passes in float32 and under bfloat16 autocast (where the CPU runs it natively): speed and loss shift.
"""

from __future__ import annotations

import resource
import tempfile
import time

import torch

from assets import settings
from bench import scoped_env
from interp.activations import harvest
from interp.corpus import make_contexts, read_documents
from interp.model import DEFAULT_MODEL, autocast, bf16_fast, load_model
from storage import activations as act_store
from storage import layout

N_CONTEXTS, BATCH = 128, 32


def _contexts(model) -> torch.Tensor:  # [N_CONTEXTS, 128]
    docs = read_documents([layout.corpora_dir()])
    ctxs = [c.tokens for _, c in zip(range(N_CONTEXTS), make_contexts(docs, model.tokenizer, 128, 0.05))]
    return torch.tensor(ctxs)


def main() -> None:
    layers = settings.parse_layers(settings.DEFAULT_LAYERS, DEFAULT_MODEL)
    model = load_model(DEFAULT_MODEL, cache_dir=layout.models_dir())
    tokens = _contexts(model)
    ids = torch.arange(tokens.shape[0])
    n_tok = tokens.shape[0] * (tokens.shape[1] - 1)
    with torch.inference_mode():
        model(tokens[:BATCH], stop_at_layer=max(layers) + 1)  # warm-up
        t0 = time.perf_counter()
        for i in range(0, tokens.shape[0], BATCH):
            model(tokens[i : i + BATCH], stop_at_layer=max(layers) + 1)
        bare = n_tok / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as home, scoped_env("ATLAS_HOME", home):
        t0 = time.perf_counter()
        writer = act_store.ShardWriter(DEFAULT_MODEL, layers, "train", "bench", shard_tokens=8192)
        for batch in harvest(model, tokens, ids, layers, BATCH):
            for layer, (x, y) in batch.acts.items():
                writer.add(layer, batch.context_id, batch.position, x, y)
        writer.finish()
        harvested = n_tok / (time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"   bare truncated forward (to layer {max(layers)}): {bare:,.0f} tokens/s")
    print(f"   harvest {len(layers)} layers + fp16 shards:     {harvested:,.0f} tokens/s")
    print(f"   ratio harvest / bare: {harvested / bare:.2f} (goal >= 0.85); peak RSS {peak:,.0f} MB")
    _bf16_line(model, tokens)


def _nll_and_rate(model, tokens: torch.Tensor, bf16: bool) -> tuple[float, float]:
    """Mean next-token loss (nats) of whole forward passes over `tokens`, and tokens/s."""
    total, t0 = 0.0, time.perf_counter()
    with torch.inference_mode(), autocast("cpu", bf16):
        for i in range(0, tokens.shape[0], BATCH):
            batch = tokens[i : i + BATCH]
            logp = torch.log_softmax(model(batch, return_type="logits")[:, :-1].float(), -1)
            total += -logp.gather(-1, batch[:, 1:, None]).sum().item()
    seconds = time.perf_counter() - t0
    n = tokens.shape[0] * (tokens.shape[1] - 1)
    return total / n, n / seconds


def _bf16_line(model, tokens: torch.Tensor) -> None:
    """bfloat16 autocast against float32 on whole forward passes: speed, and how far it moves the loss (the
    quantity every CE metric is built from)."""
    if not bf16_fast("cpu"):
        print("   bf16 forward: skipped (this CPU has no native bfloat16 matmuls; the atlas runs float32)")
        return
    nll32, rate32 = _nll_and_rate(model, tokens, bf16=False)
    nll16, rate16 = _nll_and_rate(model, tokens, bf16=True)
    print(
        f"   whole forward, float32 {rate32:,.0f} tokens/s, bf16 autocast {rate16:,.0f} tokens/s "
        f"({rate16 / rate32:.2f}x); next-token loss {nll32:.4f} vs {nll16:.4f} nats (shift {nll16 - nll32:+.4f})"
    )
