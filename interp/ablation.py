"""Checking attributions against real ablations: zero one transcoder feature in the running model and measure the
change of a target (a feature pre-activation or a logit difference), with chosen parts of the computation frozen.

With attention patterns, norm scales and every other MLP output frozen ('pattern', 'scale', 'mlp'), the model from
the ablated feature to the target is exactly the linear model of `interp.attribution.direct_effects`, so direct
effects match the measured change to float precision. With 'replacement' instead of 'mlp', every MLP with a
transcoder is the transcoder (its error term frozen at its clean value): the replacement model an attribution graph
is a linearisation of, where downstream features respond, TopK and ReLU included. With MLPs live the real
downstream MLPs respond.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from interp.attribution import FeatureTarget, Target
from interp.transcoder import Transcoder


@torch.no_grad()
def ablation_effects(
    model,
    tokens: Tensor,  # [pos]
    transcoders: Mapping[int, Transcoder],
    target: Target,
    ablations: Sequence[tuple[int, int, int]],  # (layer, position, feature)
    freeze: Sequence[str] = ("pattern", "scale"),
    batch_size: int = 32,
) -> Tensor:
    """Change of the target when each feature is zero-ablated (z_i f_dec,i removed from that MLP's output).

    The model runs for real, with what `freeze` names held at its clean value: 'pattern' (attention patterns),
    'scale' (every norm's 1/rms), 'mlp' (every MLP output, so only the ablated feature's own removal and the
    linear attention paths carry the change), 'replacement' (every MLP with a transcoder becomes the transcoder
    run on its live input plus its clean error; position 0 and MLPs without a transcoder are frozen outputs).
    Returns [len(ablations)]: ablated minus clean target value.
    """
    if "mlp" in freeze and "replacement" in freeze:
        raise ValueError(
            "freeze 'mlp' holds every MLP output fixed and 'replacement' runs transcoders; pick one."
        )
    n_pos = len(tokens)
    t = target.position % n_pos
    clean_names = []
    if "pattern" in freeze:
        clean_names += [f"blocks.{m}.attn.hook_pattern" for m in range(model.cfg.n_layers)]
    if "scale" in freeze:
        clean_names += [f"blocks.{m}.ln{k}.hook_scale" for m in range(model.cfg.n_layers) for k in (1, 2)]
        clean_names.append("ln_final.hook_scale")
    frozen_mlps = "mlp" in freeze or "replacement" in freeze
    mlp_names = [f"blocks.{m}.hook_mlp_out" for m in range(model.cfg.n_layers)] if frozen_mlps else []
    layers = sorted({a[0] for a in ablations})
    replaced = sorted(transcoders) if "replacement" in freeze else []
    x_names = [f"blocks.{layer}.ln2.hook_normalized" for layer in sorted(set(layers) | set(replaced))]
    stop = target.layer + 1 if isinstance(target, FeatureTarget) else None  # nothing above the target matters
    wanted = set(clean_names + x_names + mlp_names)
    _, cache = model.run_with_cache(
        tokens[None], names_filter=lambda name: name in wanted, stop_at_layer=stop
    )
    clean_names = [name for name in clean_names if name in cache]
    mlp_names = [name for name in mlp_names if name in cache]
    z = {
        layer: transcoders[layer].encode(cache[f"blocks.{layer}.ln2.hook_normalized"][0]) for layer in layers
    }
    # replacement: each transcoder's error at positions 1.., held while its features respond
    error = {
        layer: cache[f"blocks.{layer}.hook_mlp_out"][0]
        - transcoders[layer](cache[f"blocks.{layer}.ln2.hook_normalized"][0])  # [pos, d_model]
        for layer in replaced
        if f"blocks.{layer}.hook_mlp_out" in cache  # layers above a feature target do not run
    }

    def run(delta: dict[int, Tensor]) -> Tensor:  # delta: layer -> [B, pos, d_model] removed from MLP out
        batch = next(iter(delta.values())).shape[0]
        captured, x_live = {}, {}
        hooks = [(name, lambda act, hook: cache[hook.name].expand_as(act)) for name in clean_names]
        hooks += [
            (f"blocks.{layer}.ln2.hook_normalized", lambda act, hook: x_live.__setitem__(hook.name, act))
            for layer in error
        ]

        def mlp_out(act: Tensor, hook) -> Tensor:
            layer = int(hook.name.split(".")[1])
            base = cache[hook.name].expand_as(act) if mlp_names else act
            # replacement: the transcoder on the live input, its clean error added back; BOS stays frozen
            if layer in error:
                x = x_live[f"blocks.{layer}.ln2.hook_normalized"]  # [B, pos, d_model]
                replacement = transcoders[layer](x[:, 1:]) + error[layer][1:]
                base = torch.cat([base[:, :1], replacement], dim=1)
            return base - delta[layer] if layer in delta else base

        hooks += [
            (name, mlp_out) for name in mlp_names or [f"blocks.{layer}.hook_mlp_out" for layer in delta]
        ]
        if isinstance(target, FeatureTarget):
            name = f"blocks.{target.layer}.ln2.hook_normalized"
            hooks.append((name, lambda act, hook: captured.__setitem__("x", act)))
            model.run_with_hooks(
                tokens[None].expand(batch, -1), fwd_hooks=hooks, stop_at_layer=target.layer + 1
            )
            tc = transcoders[target.layer]
            return (
                captured["x"][:, t] @ tc.W_enc[:, target.feature]
                + tc.b_enc[target.feature]
                - (tc.b_pre @ tc.W_enc[:, target.feature])
            )
        logits = model.run_with_hooks(tokens[None].expand(batch, -1), fwd_hooks=hooks)
        out = logits[:, t, target.token]
        return out if target.other is None else out - logits[:, t, target.other]

    d_model = model.cfg.d_model
    out = []
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="A forward hook edited hook_scale"
        )  # freezing scales is the point
        clean = run({layers[0]: torch.zeros(1, n_pos, d_model, device=tokens.device)})
        for b0 in range(0, len(ablations), batch_size):
            chunk = ablations[b0 : b0 + batch_size]
            delta = {layer: torch.zeros(len(chunk), n_pos, d_model, device=tokens.device) for layer in layers}
            for row, (layer, pos, i) in enumerate(chunk):
                delta[layer][row, pos] = z[layer][pos, i] * transcoders[layer].W_dec[i]
            out.append(run(delta) - clean)
    return torch.cat(out).cpu() if out else torch.zeros(0)
