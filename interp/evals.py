"""Evaluating transcoders: reconstruction and sparsity on held-out activations, and next-token loss with the
transcoders spliced into the model (docs/evaluation.md).

Splicing replaces `blocks.L.hook_mlp_out` by transcoder(x), x stashed from `blocks.L.ln2.hook_normalized` in the
same forward pass, for one layer or several at once (`spliced`). Position 0 (BOS, the attention sink) keeps the
real MLP output, as in harvesting (interp.activations): transcoders are trained and spliced on positions 1.. only;
the ablations below replace the same positions. Loss metrics on held-out contexts:

    ce_clean         the unmodified model
    ce_spliced       every given MLP output replaced by its transcoder
    ce_ablated       every given MLP output replaced by its train-split mean (mean ablation)
    ce_zero_ablated  every given MLP output zeroed
    ce_recovered     (ce_ablated - ce_spliced) / (ce_ablated - ce_clean)
    kl               mean over predicted tokens of KL(clean || spliced)

Reconstruction metrics over the same tokens (positions 1..): l0 (mean active features per token), fvu = sum||y - y_hat||^2 /
sum||y - mean(y)||^2, mse (mean over tokens of ||y - y_hat||^2), dead_frac (never active over n_eval_tokens),
dense_frac (active on > 10% of tokens). Given a massive-activation threshold t (interp.train: 4x the median
||y - mean y|| of the training stream), also fvu_typical, the FVU over tokens with ||y - mean y|| <= t, and
massive_frac, the share of tokens above it: on SmolLM2 a few sink tokens carry most of the variance of y, and the
overall FVU says nothing about the other 99%.

`evaluate_each` also says how sure it is: it keeps each context's summed clean, spliced and ablated losses and
reports a bootstrap 95% interval over contexts (`bootstrap_intervals`: resample the contexts with replacement,
recompute the ratio of sums, take percentiles) for ce_recovered and delta_ce = ce_spliced - ce_clean. The
mean-ablated losses do not depend on the transcoder: given `ablated` (a layer's per-context ablated losses from an
earlier evaluation of the same model, mean and contexts, cached by storage.eval_baselines), that layer's ablated
passes are skipped.

`evaluate_each` evaluates several layers' transcoders each spliced alone, sharing one clean forward pass per batch
(1 + 2 x layers forward passes per batch, instead of 3 x layers). On models whose forward is embeddings -> blocks
-> final norm -> unembedding with nothing in between (Llama: SmolLM2, the default), the spliced and ablated passes
of layer L start at block L from the clean pass' `blocks.L.hook_resid_pre` (`logits_from`): the blocks before L
compute the same thing in all three runs. That skips about a third of an all-layer evaluation's work; other models
run whole forward passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp.model import mlp_hooks
from interp.transcoder import Transcoder

DENSE_THRESHOLD = 0.10
N_RESAMPLES = 1000  # bootstrap resamples: the 2.5% / 97.5% percentiles rest on 25 resamples each

MlpReplacement = Callable[
    [Tensor, Tensor], Tensor
]  # (x [b, p, d_in], y [b, p, d_out]) -> new y [b, p, d_out]


@contextlib.contextmanager
def replace_mlp_out(model, replacements: Mapping[int, MlpReplacement]) -> Iterator[None]:
    """Within the block, layer L's MLP output y at positions 1.. is replaced by replacements[L](x, y)."""
    stash: dict[int, Tensor] = {}
    hooks = []
    for layer, fn in replacements.items():
        hook_in, hook_out = mlp_hooks(layer)

        def keep_x(act, hook, layer=layer):  # [batch, pos, d_in]
            stash[layer] = act
            return act

        def swap_y(act, hook, layer=layer, fn=fn):  # [batch, pos, d_out]
            out = act.clone()
            out[:, 1:] = fn(stash.pop(layer)[:, 1:], act[:, 1:]).to(act.dtype)
            return out

        hooks += [(hook_in, keep_x), (hook_out, swap_y)]
    with model.hooks(fwd_hooks=hooks):
        yield


def spliced(model, transcoders: Mapping[int, Transcoder]) -> contextlib.AbstractContextManager[None]:
    """Context manager: every layer L in `transcoders` runs transcoders[L](x) instead of its MLP."""
    return replace_mlp_out(
        model, {layer: (lambda x, y, tc=tc: tc(x.to(tc.W_enc.dtype))) for layer, tc in transcoders.items()}
    )


def mean_ablated(model, means: Mapping[int, Tensor]) -> contextlib.AbstractContextManager[None]:
    """Context manager: layer L's MLP output is the constant means[L] [d_out]."""
    return replace_mlp_out(
        model, {layer: (lambda x, y, m=m: m.to(y).expand_as(y)) for layer, m in means.items()}
    )


def zero_ablated(model, layers) -> contextlib.AbstractContextManager[None]:
    return replace_mlp_out(model, {layer: (lambda x, y: torch.zeros_like(y)) for layer in layers})


class ReconstructionStats:
    """Streaming L0 / FVU / MSE / feature firing counts over batches of (x, y); with `massive` = (y_center [d_out],
    threshold), the same FVU over the typical tokens (||y - y_center|| <= threshold)."""

    def __init__(self, d_sae: int, massive: tuple[Tensor, float] | None = None):
        self.massive = massive
        self.typical = [0, 0.0, None, 0.0]  # n, err_sum, y_sum, y_sq_sum over typical tokens
        self.n = 0
        self.l0_sum = 0.0
        self.err_sum = 0.0
        self.y_sum: Tensor | None = None
        self.y_sq_sum = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.long)

    @torch.no_grad()
    def update(self, tc: Transcoder, x: Tensor, y: Tensor) -> None:  # x [n, d_in], y [n, d_out]
        with torch.autocast(
            x.device.type, enabled=False
        ):  # the transcoder in its own precision, even when the
            self._update(tc, x, y)  # model's passes run under bf16 autocast

    def _update(self, tc: Transcoder, x: Tensor, y: Tensor) -> None:
        x, y = x.to(tc.W_enc), y.to(tc.W_enc).double()
        z = tc.encode(x)  # [n, d_sae]
        y_hat = tc.decode(z, x).double()
        active = z > 0
        self.n += x.shape[0]
        self.l0_sum += active.sum().item()
        self.fired += active.sum(0).cpu()
        self.err_sum += (y - y_hat).pow(2).sum().item()
        ys = y.sum(0).cpu()
        self.y_sum = ys if self.y_sum is None else self.y_sum + ys
        self.y_sq_sum += y.pow(2).sum().item()
        if self.massive is not None:
            center, threshold = self.massive
            keep = (y - center.to(y)).norm(dim=-1) <= threshold  # [n]
            yt, et = y[keep], (y - y_hat)[keep]
            n, err, y_sum, y_sq = self.typical
            yts = yt.sum(0).cpu()
            self.typical = [
                n + int(keep.sum()),
                err + et.pow(2).sum().item(),
                yts if y_sum is None else y_sum + yts,
                y_sq + yt.pow(2).sum().item(),
            ]

    def result(self) -> dict[str, float]:
        if self.n == 0:
            raise ValueError("No evaluation tokens: the held-out set is empty.")
        total_var = self.y_sq_sum - (self.y_sum.pow(2).sum().item() / self.n)  # sum ||y - mean y||^2
        density = self.fired.double() / self.n
        typical = {}
        if self.massive is not None:
            n, err, y_sum, y_sq = self.typical
            var = y_sq - y_sum.pow(2).sum().item() / n if n else 0.0
            typical = {"fvu_typical": err / max(var, 1e-12), "massive_frac": 1 - n / self.n}
        return {
            **typical,
            "n_eval_tokens": self.n,
            "l0": self.l0_sum / self.n,
            "fvu": self.err_sum / max(total_var, 1e-12),
            "mse": self.err_sum / self.n,
            "dead_frac": (self.fired == 0).double().mean().item(),
            "dense_frac": (density > DENSE_THRESHOLD).double().mean().item(),
        }


# Hugging Face model types whose forward runs embed -> decoder layers -> final norm -> lm_head and does nothing to
# the embeddings on the way (Gemma scales them, GPT-2 adds positions): a pass can start at any block's input.
RESUMABLE_MODEL_TYPES = frozenset({"llama"})


def _resumable(model) -> bool:
    hf = getattr(model, "original_model", None)
    return getattr(getattr(hf, "config", None), "model_type", None) in RESUMABLE_MODEL_TYPES


def logits_from(model, tokens: Tensor, resid_pre: Tensor | None = None, start: int = 0) -> Tensor:
    """Logits [b, p, vocab] of tokens [b, p]. Given resid_pre [b, p, d_model] = `blocks.{start}.hook_resid_pre` of
    the same tokens, a resumable model runs only blocks start.. (hooks on them fire as usual); others run whole.
    Not thread-safe: the model's layer list is swapped for the call."""
    if resid_pre is None or start == 0 or not _resumable(model):
        return model(tokens, return_type="logits")
    hf = model.original_model
    layers = hf.model.layers
    hf.model.layers = layers[start:]
    try:
        return hf(inputs_embeds=resid_pre, use_cache=False).logits
    finally:
        hf.model.layers = layers


class NextTokenLosses:
    """Per-token next-token losses of one pass, and its KL from a reference (clean) pass of the same tokens.

    Built from logits without materializing log-softmax: nll = logsumexp(l) - l[next token], and
    KL(clean || pass) = sum p log p - sum p l + logsumexp(l), with the clean distribution p and its sum p log p
    computed once per batch. Each further pass costs one logsumexp and one p . l product over the vocabulary.
    """

    def __init__(
        self,
        logits: Tensor,  # [b, p, vocab]
        tokens: Tensor,  # [b, p]
        clean: NextTokenLosses | None = None,  # the reference pass: also compute self.kl
        keep_distribution: bool = False,  # keep p (this is the reference pass)
    ):
        lg = logits[:, :-1].float()  # [b, p-1, vocab]
        self.lse = torch.logsumexp(lg, dim=-1)  # [b, p-1]
        self.nll = self.lse - lg.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # [b, p-1]
        self.kl = None if clean is None else clean.neg_entropy - _dot(clean.p, lg) + self.lse  # [b, p-1]
        if keep_distribution:
            self.p = torch.exp(lg - self.lse[..., None])  # [b, p-1, vocab]
            self.neg_entropy = _dot(self.p, lg) - self.lse  # sum p log p  [b, p-1]


def _dot(p: Tensor, lg: Tensor) -> Tensor:  # sum_v p[..., v] lg[..., v]: [b, p-1, vocab] x2 -> [b, p-1]
    return torch.einsum("bpv,bpv->bp", p, lg)  # no [b, p-1, vocab] temporary


def _pass_losses(model, tokens: Tensor, resid_pre=None, start: int = 0, clean=None) -> NextTokenLosses:
    """Losses of one pass (see logits_from for resid_pre and start; with `clean`, also its KL from that pass)."""
    return NextTokenLosses(logits_from(model, tokens, resid_pre, start), tokens, clean)


def _check_tokens(tokens: Tensor) -> None:
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(
            f"Evaluation needs [n_ctx >= 1, ctx_len >= 2] tokens, got shape {tuple(tokens.shape)}."
        )


def ce_recovered(ce_clean: float, ce_spliced: float, ce_ablated: float) -> float:
    denom = ce_ablated - ce_clean
    return float("nan") if abs(denom) < 1e-9 else (ce_ablated - ce_spliced) / denom


def bootstrap_intervals(
    clean,  # [n_ctx] each context's summed clean next-token loss
    spliced,  # [n_ctx] ... with the transcoder spliced in
    ablated,  # [n_ctx] ... with the MLP mean-ablated
    n_tokens,  # [n_ctx] predicted tokens per context (or one number for all)
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Percentile bootstrap over contexts: {'ce_recovered_lo', 'ce_recovered_hi', 'delta_ce_lo', 'delta_ce_hi'}.

    1. draw n_resamples samples of n_ctx contexts with replacement (numpy generator seeded by `seed`);
    2. in each, sum the losses and tokens of the drawn contexts and form the statistics as the point estimate does:
       ce_recovered = (A - S) / (A - C), delta_ce = (S - C) / N;
    3. report the (1 - level)/2 and (1 + level)/2 percentiles (resamples whose denominator is 0 are left out).
    Contexts, not tokens, are resampled: tokens of one context are correlated, so a token bootstrap is too narrow.
    """
    c, s, a = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (clean, spliced, ablated))
    n = np.broadcast_to(np.asarray(n_tokens, dtype=np.float64), c.shape)
    if not (c.shape == s.shape == a.shape) or c.size == 0:
        raise ValueError(
            f"Per-context losses must be equal, non-empty vectors, got {c.shape}, {s.shape}, {a.shape}."
        )
    idx = np.random.default_rng(seed).integers(0, c.size, size=(n_resamples, c.size))  # [R, n_ctx]
    C, S, A, N = (v[idx].sum(1) for v in (c, s, a, n))  # [R] each
    denom = A - C
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = np.where(np.abs(denom) < 1e-9, np.nan, (A - S) / denom)
    q = [50 * (1 - level), 50 * (1 + level)]
    rec = rec[np.isfinite(rec)]
    rec_lo, rec_hi = np.percentile(rec, q) if rec.size else (float("nan"), float("nan"))
    d_lo, d_hi = np.percentile((S - C) / N, q)
    return {
        "ce_recovered_lo": float(rec_lo),
        "ce_recovered_hi": float(rec_hi),
        "delta_ce_lo": float(d_lo),
        "delta_ce_hi": float(d_hi),
    }


@torch.no_grad()
def evaluate(
    model,
    transcoders: Mapping[int, Transcoder],
    tokens: Tensor,  # [n_ctx, ctx_len] held-out contexts, BOS first
    means: Mapping[int, Tensor],  # layer -> train-split mean MLP output [d_out]
    batch_size: int = 8,
    zero_ablation: bool = True,
    progress: bool = False,
) -> dict:
    """Loss metrics with all `transcoders` spliced at once, plus reconstruction metrics per layer.

    Returns {'ce_clean', 'ce_spliced', 'ce_ablated', ['ce_zero_ablated'], 'ce_recovered', 'kl', 'n_ce_tokens',
    'layers': {L: {'l0', 'fvu', 'mse', 'dead_frac', 'dense_frac', 'n_eval_tokens'}}}. Reconstruction uses each
    layer's clean x, y (the transcoder alone), the losses use the spliced model.
    """
    _check_tokens(tokens)
    layers = sorted(transcoders)
    device = next(iter(transcoders.values())).W_enc.device
    stats = {layer: ReconstructionStats(transcoders[layer].d_sae) for layer in layers}
    names = {h for layer in layers for h in mlp_hooks(layer)}
    sums = {"ce_clean": 0.0, "ce_spliced": 0.0, "ce_ablated": 0.0, "ce_zero_ablated": 0.0, "kl": 0.0}
    n_pred = 0
    for i in tqdm(range(0, tokens.shape[0], batch_size), desc="evaluating", disable=not progress):
        batch = tokens[i : i + batch_size].to(device)  # [b, p]
        logits, cache = model.run_with_cache(batch, names_filter=lambda n: n in names)
        clean = NextTokenLosses(logits, batch, keep_distribution=True)
        for layer in layers:
            hook_in, hook_out = mlp_hooks(layer)
            x, y = (
                cache[hook_in][:, 1:].flatten(0, 1),
                cache[hook_out][:, 1:].flatten(0, 1),
            )  # [b*(p-1), d_model]
            stats[layer].update(transcoders[layer], x, y)
        del cache
        with spliced(model, transcoders):
            losses = _pass_losses(model, batch, clean=clean)
        sums["ce_spliced"] += _context_sums(losses.nll).sum().item()
        sums["kl"] += losses.kl.sum().item()
        with mean_ablated(model, means):
            sums["ce_ablated"] += _context_sums(_pass_losses(model, batch).nll).sum().item()
        if zero_ablation:
            with zero_ablated(model, layers):
                sums["ce_zero_ablated"] += _context_sums(_pass_losses(model, batch).nll).sum().item()
        sums["ce_clean"] += _context_sums(clean.nll).sum().item()  # float64, as evaluate_each
        n_pred += batch.shape[0] * (batch.shape[1] - 1)
    out = {k: v / n_pred for k, v in sums.items()}
    if not zero_ablation:
        del out["ce_zero_ablated"]
    out["ce_recovered"] = ce_recovered(out["ce_clean"], out["ce_spliced"], out["ce_ablated"])
    out["n_ce_tokens"] = n_pred
    out["layers"] = {layer: stats[layer].result() for layer in layers}
    return out


def evaluate_layer(model, tc: Transcoder, layer: int, tokens: Tensor, mean: Tensor, **kw) -> dict:
    """One layer spliced alone: the flat metric dict of `transcoder_metrics` (without the gate)."""
    res = evaluate(model, {layer: tc}, tokens, {layer: mean}, **kw)
    per_layer = res.pop("layers")[layer]
    return {**per_layer, **res}


@torch.no_grad()
def evaluate_each(
    model,
    transcoders: Mapping[int, Transcoder],
    tokens: Tensor,  # [n_ctx, ctx_len] held-out contexts, BOS first
    means: Mapping[int, Tensor],  # layer -> train-split mean MLP output [d_out]
    massive: Mapping[int, tuple[Tensor, float]] | None = None,  # layer -> (y_center [d_out], threshold)
    batch_size: int = 8,
    progress: bool = False,
    ablated: Mapping[int, Tensor] | None = None,  # layer -> known per-context ablated losses [n_ctx]
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> dict[int, dict]:
    """Each layer's transcoder spliced ALONE: {layer: the flat metric dict of `transcoder_metrics`}, sharing one
    clean forward pass (reconstruction metrics of every layer and the clean loss) per batch.

    Each dict also holds the bootstrap interval (`bootstrap_intervals`, seeded by `seed`), 'n_eval_contexts' and
    'ablated_per_context' [n_ctx] (float64 summed ablated loss of each context, for the baseline cache). A layer
    in `ablated` reuses those losses instead of running its mean-ablated passes (one pass per batch fewer)."""
    _check_tokens(tokens)
    layers = sorted(transcoders)
    massive = massive or {}
    known = {layer: torch.as_tensor(v, dtype=torch.float64) for layer, v in (ablated or {}).items()}
    for layer, v in known.items():
        if v.shape != (tokens.shape[0],):
            raise ValueError(
                f"Cached ablated losses of layer {layer} have shape {tuple(v.shape)}, not [n_ctx]."
            )
    device = next(iter(transcoders.values())).W_enc.device
    stats = {layer: ReconstructionStats(transcoders[layer].d_sae, massive.get(layer)) for layer in layers}
    resid = {layer: f"blocks.{layer}.hook_resid_pre" for layer in layers}
    names = {h for layer in layers for h in mlp_hooks(layer)} | set(resid.values())
    # per batch, the [b] float64 summed losses of each context
    per_ctx = {layer: {"spliced": [], "ablated": []} for layer in layers}
    kl = dict.fromkeys(layers, 0.0)
    clean_ctx = []
    for i in tqdm(range(0, tokens.shape[0], batch_size), desc="evaluating", disable=not progress):
        batch = tokens[i : i + batch_size].to(device)  # [b, p]
        logits, cache = model.run_with_cache(batch, names_filter=lambda n: n in names)
        clean = NextTokenLosses(logits, batch, keep_distribution=True)
        del logits
        for layer in layers:
            hook_in, hook_out = mlp_hooks(layer)
            x, y = cache[hook_in][:, 1:].flatten(0, 1), cache[hook_out][:, 1:].flatten(0, 1)  # [b*(p-1), d]
            stats[layer].update(transcoders[layer], x, y)
        starts = {layer: cache[resid[layer]] for layer in layers}  # [b, p, d_model] each
        del cache
        clean_ctx.append(_context_sums(clean.nll))
        for layer in layers:
            with spliced(model, {layer: transcoders[layer]}):
                losses = _pass_losses(model, batch, starts[layer], layer, clean)
            per_ctx[layer]["spliced"].append(_context_sums(losses.nll))
            kl[layer] += losses.kl.sum().item()
            if layer in known:
                continue
            with mean_ablated(model, {layer: means[layer]}):
                losses = _pass_losses(model, batch, starts[layer], layer)
            per_ctx[layer]["ablated"].append(_context_sums(losses.nll))
    n_per_ctx = tokens.shape[1] - 1
    n_pred = tokens.shape[0] * n_per_ctx
    c = torch.cat(clean_ctx)  # [n_ctx]
    out = {}
    for layer in layers:
        s = torch.cat(per_ctx[layer]["spliced"])
        a = known[layer] if layer in known else torch.cat(per_ctx[layer]["ablated"])
        m = {"ce_clean": c.sum().item() / n_pred, "ce_spliced": s.sum().item() / n_pred}
        m["ce_ablated"] = a.sum().item() / n_pred
        m["kl"] = kl[layer] / n_pred
        m["ce_recovered"] = ce_recovered(m["ce_clean"], m["ce_spliced"], m["ce_ablated"])
        interval = bootstrap_intervals(c, s, a, n_per_ctx, n_resamples, seed)
        out[layer] = {
            **stats[layer].result(),
            **m,
            **interval,
            "n_ce_tokens": n_pred,
            "n_eval_contexts": tokens.shape[0],
            "ablated_per_context": a,
        }
    return out


def _context_sums(nll: Tensor) -> Tensor:  # [b, p-1] -> [b] float64 on the CPU
    return nll.double().sum(1).cpu()
