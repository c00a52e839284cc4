"""Harvest MLP inputs and outputs of several layers in one forward pass.

Steps:
  1. Run the model on a batch of contexts with `run_with_cache`, caching only x = `blocks.L.ln2.hook_normalized`
     and y = `blocks.L.hook_mlp_out` of the requested layers, stopping after the highest one.
  2. Drop position 0: BOS is the same token at the same position in every context, so its x and y are one
     constant vector (the attention sink, with an outsized norm) that would dominate a reconstruction loss.
     Transcoders are trained and spliced on positions 1.. only; position 0 keeps the real MLP output.
  3. Check for non-finite values (a clear error names the layer) and yield flat [tokens, d_model] tensors with
     the (context_id, position) of every row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from interp.model import autocast, check_layers, mlp_hooks


class NonFiniteActivationError(ValueError):
    pass


@dataclass
class HarvestBatch:
    context_id: Tensor  # [n] int64
    position: Tensor  # [n] int64
    acts: dict[int, tuple[Tensor, Tensor]]  # layer -> (x [n, d_model], y [n, d_model])


def check_finite(t: Tensor, what: str) -> Tensor:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        raise NonFiniteActivationError(
            f"{what} has {bad} NaN/inf values; the model or its dtype is numerically broken on this input "
            "(try dtype float32, or check the checkpoint)."
        )
    return t


@torch.inference_mode()
def harvest(
    model,
    tokens: Tensor,  # [n_ctx, ctx_len] int64, BOS first
    context_ids: Tensor,  # [n_ctx] int64
    layers: list[int],
    batch_size: int = 32,
    bf16: bool = False,  # forward passes under bfloat16 autocast where the device runs it natively
) -> Iterator[HarvestBatch]:
    check_layers(model, layers)
    names = {name for layer in layers for name in mlp_hooks(layer)}
    device = next(model.parameters()).device
    stop = max(layers) + 1
    for i in range(0, tokens.shape[0], batch_size):
        batch = tokens[i : i + batch_size].to(device)  # [b, pos]
        with autocast(device, bf16):
            _, cache = model.run_with_cache(batch, names_filter=lambda n: n in names, stop_at_layer=stop)
        b, pos = batch.shape
        acts = {}
        for layer in layers:
            hx, hy = mlp_hooks(layer)
            x = cache[hx][:, 1:].reshape(-1, cache[hx].shape[-1])  # [b * (pos-1), d_model]
            y = cache[hy][:, 1:].reshape(-1, cache[hy].shape[-1])
            acts[layer] = (
                check_finite(x, f"Layer {layer} MLP input"),
                check_finite(y, f"Layer {layer} MLP output"),
            )
        yield HarvestBatch(
            context_id=context_ids[i : i + b].repeat_interleave(pos - 1),
            position=torch.arange(1, pos).repeat(b),
            acts=acts,
        )
