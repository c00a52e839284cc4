"""Training one transcoder on streamed (x, y) activation pairs: x = normalized MLP input, y = MLP output.

Algorithm:
  1. Statistics from the first `buffer_tokens` of the stream: b_pre <- mean(x), b_dec <- mean(y) / s, where
     s = median ||y - mean(y)|| (robust). Targets are divided by s while training, so a typical token's error is
     on a unit scale and lr / l1_coefficient transfer across layers; `finish` multiplies the decoder back by s.
     Tokens whose scaled target norm exceeds `outlier_norm` count with weight (outlier_norm / norm)^2, i.e. by
     relative error: SmolLM2 has rare massive activations (attention-sink tokens; at layer 2, 3% of tokens carry
     93% of the variance of y) that would otherwise take all the capacity while the other 97% go unmodelled.
  2. The stream (a re-iterable of {'x': [n, d_in], 'y': [n, d_out]} chunks, cycled for several epochs) passes
     through a seeded shuffle buffer; every chunk is checked for NaN/inf.
  3. Each step, on a batch of `batch_size` tokens:
       relu: loss = w ||y/s - y_hat||^2 + lambda_t * sum_i z_i ||W_dec[i]||   (norm-weighted L1, rows free;
             lambda_t warms up linearly over `l1_warmup_steps`)
       topk: loss = w ||y/s - y_hat||^2 + aux_coefficient * AuxK, where AuxK reconstructs the residual from the
             top `aux_k` dead features (Gao et al. 2024); the encoder backward and decoder are sparse (k of
             d_sae columns/rows per token); decoder rows are kept unit norm (gradient projected, rows renormed).
     Adam, lr warm-up over `lr_warmup_steps`, linear decay to 0 over the last `lr_decay_frac` of the steps.
  4. Features that have not fired for `dead_window_tokens` are dead. relu: every `resample_every` steps dead
     features are re-initialized towards badly reconstructed inputs (Anthropic's resampling); topk: AuxK.
  5. Every `checkpoint_every` stream items the full state (weights, Adam moments, dead-feature counters, curve,
     shuffle buffer and the count of items consumed) is saved atomically; a resumed run skips the items already
     consumed, so a killed and resumed run ends with the same weights as an uninterrupted one.
  6. `train_layers` trains the transcoders of several layers from one stream: one forward pass of the model per
     item feeds every layer, each through its own shuffle buffer and Trainer, exactly as `train` would on that
     layer's chunks alone. `train` is the one-layer case, cycling its chunks for as many epochs as the budget
     needs.
  7. Keep training: a finished run's `train_state()` (Adam moments and step counts, the step and token counters,
     the dead-feature counters, b_pre = mean(x), mean(y) and s; no shuffle buffer) is saved next to its weights.
     `Trainer.continued` rebuilds the training form from the saved weights and that state, so a continued run
     takes the steps the uninterrupted one would have taken on the same batches. Its lr re-warms over
     `lr_warmup_steps` and decays over the last `lr_decay_frac` of its own steps (docs/training.md, "Keep
     training"); steps and tokens count on from the parent's.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from interp.model import bf16_fast
from interp.transcoder import Transcoder, TranscoderConfig

log = logging.getLogger(__name__)

Chunks = Callable[
    [], Iterable[Mapping[str, Tensor]]
]  # re-iterable stream of {'x': [n, d_in], 'y': [n, d_out]}


SKIP_INITS = ("zero", "lstsq")


@dataclass
class TrainConfig:
    """How to train a transcoder; its shape is its TranscoderConfig. The defaults are the atlas's build."""

    lr: float = 1e-3
    """Adam step size. 4e-3 collapsed the effective L0 (SmolLM2 L8: 3 of k=32 positive on held-out tokens, FVU
    0.47; L20: 1.8, 0.35): steps that large push most pre-activations below zero. 1e-3 keeps L0 25-27 with FVU
    0.35 / 0.25; 2e-3 and 5e-4 were worse (400k tokens, batch 1024; `python -m bench sample_efficiency`)."""
    lr_warmup_steps: int = 20
    """lr ramps up linearly from 0 over these steps."""
    lr_decay_frac: float = 0.2
    """lr decays linearly to 0 over this last fraction of the steps."""
    batch_size: int = 1024
    """Tokens per step (1024 beat 4096 and 512 at the 400k-token budget)."""
    train_tokens: int = 400_000
    """Token budget per layer (steps = train_tokens // batch_size)."""
    buffer_tokens: int = 32_768
    """Shuffle buffer per layer, in tokens; the first buffer_tokens also give the initial statistics (step 1).
    In float16, 75 MB per SmolLM2 layer (2.3 GB for a 30-layer streaming run); it mixes about 16 forward passes
    of 16 contexts."""
    seed: int = 0
    """Weights init and shuffling (the asset also seeds its training-context sample with it)."""
    skip_init: str = "zero"
    """How the skip path starts: 'zero', or 'lstsq': W_skip and b_dec fitted by least squares to the first
    buffer (outliers weighted as in training), so the linear part of the MLP is in place before any feature
    trains and the features start on what it leaves (`python -m bench sample_efficiency` compares both)."""
    outlier_norm: float = 4.0
    """Targets beyond this many median norms are fit by relative error (step 1)."""
    l1_coefficient: float = 3e-3
    """relu: weight of sum_i z_i ||W_dec[i]|| against the FVU-scaled MSE."""
    l1_warmup_steps: int = 50
    """relu: the L1 weight ramps up from 0 over these steps (about 1/8 of the default run)."""
    dead_window_tokens: int = 200_000
    """A feature silent for this many tokens is dead."""
    aux_k: int = 256
    """topk: dead features used by AuxK."""
    aux_coefficient: float = 1 / 32
    """topk: weight of the AuxK loss."""
    resample_every: int = 50
    """relu: steps between dead-feature resampling (0 = never)."""
    checkpoint_every: int = 25
    """Stream items (chunks, or forward batches when streaming) between checkpoints (0 = never)."""
    log_every: int = 10
    """Steps between training-curve rows."""
    device: str = "cpu"
    bf16: bool = True
    """bfloat16 autocast where the device runs it natively (CUDA; CPUs with AVX512-BF16 or AMX): training steps
    1.25x faster on this project's CPU machine with held-out FVU within 0.002 of float32 (SmolLM2 L8 and L20);
    the `transcoders` asset's forward passes 2x faster."""

    def __post_init__(self) -> None:
        if self.skip_init not in SKIP_INITS:
            raise ValueError(f"skip_init must be one of {', '.join(SKIP_INITS)}, got {self.skip_init!r}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.train_tokens < self.batch_size:
            raise ValueError(
                f"train_tokens={self.train_tokens} is less than one batch ({self.batch_size} tokens); "
                "give a token budget of at least one batch."
            )

    @property
    def steps(self) -> int:
        return max(1, self.train_tokens // self.batch_size)


STATE_FILE = "train_state.safetensors"


@dataclass
class TrainState:
    """What continuing a finished run needs besides its saved weights (step 7 of the module docstring), in training
    units (targets divided by `scale`): 2 x the trained parameters for Adam, a few vectors for the rest (45 MB for a
    SmolLM2 layer at d_sae 4,608 with skip). No shuffle buffer: a continued run starts a new one on new data."""

    step: int
    """Optimizer steps taken; a continued run counts on from here."""
    tokens: int
    """Training tokens seen by the weights, every run of the lineage together."""
    scale: float
    """s of step 1, fixed by the first run of the lineage."""
    x_mean: Tensor  # [d_in] b_pre (folded into b_enc in the saved weights)
    y_mean: Tensor  # [d_out]
    since_fired: Tensor  # [d_sae] tokens since each feature last fired (dead-feature counters)
    adam: dict[str, dict[str, Tensor]]
    """Parameter name -> its Adam state {'step', 'exp_avg', 'exp_avg_sq'}."""
    context_ids: Tensor | None = None
    """[n] ids of the training contexts the weights have seen, where the caller records them (the asset does, so
    that a continued run draws new ones); training does not read it."""

    def save(self, directory: str) -> None:
        tensors = {
            "step": torch.tensor(self.step),
            "tokens": torch.tensor(self.tokens),
            "scale": torch.tensor(self.scale, dtype=torch.float64),
            "x_mean": self.x_mean,
            "y_mean": self.y_mean,
            "since_fired": self.since_fired,
            **{f"adam.{name}.{key}": v for name, st in self.adam.items() for key, v in st.items()},
        }
        if self.context_ids is not None:
            tensors["context_ids"] = self.context_ids
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, os.path.join(directory, STATE_FILE))

    @classmethod
    def load(cls, directory: str) -> TrainState:
        t = load_file(os.path.join(directory, STATE_FILE))
        adam: dict[str, dict[str, Tensor]] = {}
        for key, v in t.items():
            if key.startswith("adam."):
                _, name, part = key.split(".")
                adam.setdefault(name, {})[part] = v
        return cls(
            step=int(t["step"]),
            tokens=int(t["tokens"]),
            scale=float(t["scale"]),
            x_mean=t["x_mean"],
            y_mean=t["y_mean"],
            since_fired=t["since_fired"],
            adam=adam,
            context_ids=t.get("context_ids"),
        )


Parent = tuple[Transcoder, TrainState]
"""A finished run to continue: its transcoder as saved (`Trainer.finish`) and its `Trainer.train_state()`."""


def check_parent_shape(tc_cfg: TranscoderConfig, parent: TranscoderConfig) -> None:
    """A clear error when the requested shape is not the parent's: a continued run keeps the parent's shape."""
    keys = ("d_in", "d_sae", "d_out", "architecture", "k", "skip")
    want, have = ({k: getattr(c, k) for k in keys} for c in (tc_cfg, parent))
    if want != have:
        diff = ", ".join(f"{k} {have[k]} (asked {want[k]})" for k in keys if want[k] != have[k])
        raise ValueError(
            f"Cannot continue training: the parent transcoder has {diff}. A continued run keeps its parent's "
            "shape; ask for that shape, or train a new transcoder from scratch."
        )


@dataclass
class TrainResult:
    transcoder: Transcoder  # decoder scale restored, b_pre folded: ready to save
    curve: list[dict] = field(default_factory=list)  # rows of the `training_curves` table
    train_tokens: int = 0
    y_mean: Tensor | None = None  # [d_out] train-split mean MLP output (for mean ablation)
    dead_frac: float = 0.0  # at the end of training
    scale: float = (
        1.0  # s, the median ||y - mean y|| of the first buffer (outlier_norm * s: massive activations)
    )
    state: TrainState | None = None  # what a continued run needs (Trainer.train_state)
    start_tokens: int = 0  # tokens the parent had seen (0 from scratch); train_tokens counts them too


class NonFiniteActivationsError(ValueError):
    pass


def _check_finite(chunk: Mapping[str, Tensor]) -> None:
    for name in ("x", "y"):
        t = chunk[name]
        if not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).any(-1).sum().item()
            raise NonFiniteActivationsError(
                f"Activations {name!r} contain NaN/inf in {bad} of {t.shape[0]} rows; the harvest is corrupt "
                "(re-materialize `activations`, and check the model runs in float32)."
            )


class ShuffleBuffer:
    """A seeded shuffle buffer of (x, y) rows: `push` chunks, then `release` the batches they free.

    Rows are kept in `dtype` (float16 by default, the precision of the activation shards, so a buffer per layer of
    a 30-layer streaming run fits in memory) and released as float32. Once `capacity` rows are held, `release`
    yields random batches until half the buffer is left; `release(final=True)` empties it down to one partial
    batch (the end of a stream).
    """

    def __init__(self, batch_size: int, capacity: int, seed: int, dtype: torch.dtype = torch.float16):
        self.batch_size, self.capacity, self.dtype = batch_size, capacity, dtype
        self.gen = torch.Generator().manual_seed(seed)
        self.xs: list[Tensor] = []
        self.ys: list[Tensor] = []
        self.held = 0

    def push(self, x: Tensor, y: Tensor) -> None:  # x [n, d_in], y [n, d_out]
        _check_finite({"x": x, "y": y})
        self.xs.append(x.detach().to("cpu", self.dtype))
        self.ys.append(y.detach().to("cpu", self.dtype))
        self.held += x.shape[0]

    @property
    def full(self) -> bool:
        return self.held >= self.capacity

    def peek(self, n: int) -> tuple[Tensor, Tensor]:
        """The first n rows held, in arrival order, as float32."""
        self._merge()
        return self.xs[0][:n].float(), self.ys[0][:n].float()

    def release(self, final: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """Random batches (x [batch, d_in], y [batch, d_out]) while more than half the buffer is held (all of it
        when final)."""
        if not (final or self.full) or self.held < self.batch_size:
            return
        self._merge()
        perm = torch.randperm(self.held, generator=self.gen)
        keep = 0 if final else self.capacity // 2
        n_out = (self.held - keep) // self.batch_size * self.batch_size
        x, y = self.xs[0], self.ys[0]
        rest = perm[n_out:]
        self.xs, self.ys, self.held = [x[rest]], [y[rest]], len(rest)
        for i in range(0, n_out, self.batch_size):
            sel = perm[i : i + self.batch_size]
            yield x[sel].float(), y[sel].float()

    def _merge(self) -> None:
        if len(self.xs) > 1:
            self.xs, self.ys = [torch.cat(self.xs)], [torch.cat(self.ys)]

    def state_dict(self) -> dict:
        self._merge()
        return {"xs": self.xs, "ys": self.ys, "held": self.held, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.xs, self.ys, self.held = state["xs"], state["ys"], state["held"]
        self.gen.set_state(state["gen"])


def _init_stats(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, float, Tensor]:
    """mean(x) [d_in], mean(y) [d_out], s = median ||y - mean y|| and a sample x [<= 4096, d_in] of the first rows
    of a stream (x [n, d_in], y [n, d_out])."""
    x, y = x.double(), y.double()
    y_mean = y.mean(0)
    scale = (y - y_mean).norm(dim=-1).median().item()  # robust to rare massive activations
    return x.mean(0).float(), y_mean.float(), max(scale, 1e-8), x[:4096].float()


def least_squares_skip(
    x: Tensor, y: Tensor, scale: float, outlier_norm: float
) -> tuple[Tensor, Tensor, float]:
    """(W [d_out, d_in], b [d_out], residual) minimising Σ_n w_n ||y_n / scale - W x_n - b||² over the rows of
    x [n, d_in], y [n, d_out], with training's outlier weights w_n (step 1) and a ridge of 1e-6 of the mean input
    variance: the best linear map from the MLP's input to its (scaled) output, and the weighted RMS norm of what
    it leaves (what the features start to model)."""
    x, y = x.double(), y.double() / scale
    w = (
        (outlier_norm / (y - y.mean(0)).norm(dim=-1).clamp_min(1e-12)).clamp(max=1.0).pow(2)[:, None]
    )  # [n, 1]
    x_mean, y_mean = (w * x).sum(0) / w.sum(), (w * y).sum(0) / w.sum()
    xc, yc = x - x_mean, y - y_mean
    cov = (w * xc).T @ xc  # [d_in, d_in]
    cov += torch.eye(len(cov), dtype=cov.dtype) * (1e-6 * cov.trace() / len(cov))
    W = torch.linalg.solve(cov, (w * xc).T @ yc).T  # [d_out, d_in]
    residual = ((w * (yc - xc @ W.T).pow(2)).sum() / w.sum()).sqrt()
    return W.float(), (y_mean - W @ x_mean).float(), float(residual)


class Trainer:
    """State of one training run (model, optimizer, counters); `step` consumes one batch. The transcoder's shape
    is `tc_cfg`, exactly as given; `cfg` says how to train it."""

    def __init__(
        self,
        cfg: TrainConfig,
        tc_cfg: TranscoderConfig,
        x_mean: Tensor,
        y_mean: Tensor,
        scale: float,
        x_sample: Tensor,
        skip_fit: tuple[Tensor, Tensor, float] | None = None,
    ):
        """`skip_fit`: least_squares_skip's (W_skip, b_dec, residual) on the scaled targets, for cfg.skip_init
        'lstsq'."""
        tc = Transcoder(tc_cfg)
        tc.reset_parameters(torch.Generator().manual_seed(cfg.seed))
        with torch.no_grad():
            tc.b_pre.copy_(x_mean)
            tc.b_dec.copy_(y_mean / scale)
            target_spread = 1.0  # the scaled targets' typical norm
            if skip_fit is not None and tc.W_skip is not None:
                tc.W_skip.copy_(skip_fit[0])
                tc.b_dec.copy_(skip_fit[1])
                target_spread = skip_fit[2]  # the features start on what the linear fit leaves
            if tc_cfg.architecture == "topk":
                tc.W_dec.div_(tc.W_dec.norm(dim=-1, keepdim=True))
            # scale the encoder so the features' initial output has the spread of what they model: both
            # activations are positively homogeneous, so this keeps which features fire
            features = tc.decode(tc.encode(x_sample), x_sample) - tc.b_dec
            if tc.W_skip is not None:
                features = features - tc.skip_out(x_sample)
            spread = features.pow(2).sum(-1).mean().sqrt().clamp_min(1e-8)
            tc.W_enc.div_(spread / target_spread)
        self._setup(cfg, tc, y_mean, scale)

    def _setup(self, cfg: TrainConfig, tc: Transcoder, y_mean: Tensor, scale: float) -> None:
        """The optimizer and counters around `tc` (training form: targets divided by `scale`, b_pre unfolded)."""
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.use_bf16 = cfg.bf16 and bf16_fast(self.device)
        self.tc = tc
        self.tc.b_pre.requires_grad_(False)  # redundant with b_enc; kept at mean(x)
        self.tc.to(self.device)
        self.scale = scale
        self.y_mean = y_mean
        self.y_center = (y_mean / scale).to(self.device)  # [d_out]
        self.opt = torch.optim.Adam([p for _, p in self._params()], lr=cfg.lr, betas=(0.9, 0.999))
        self.step_no = self.start_step = 0  # start_step: the parent's steps (a continued run)
        self.tokens = self.start_tokens = 0
        self.since_fired = torch.zeros(tc.cfg.d_sae, dtype=torch.long, device=self.device)
        self.curve: list[dict] = []

    @classmethod
    def continued(cls, cfg: TrainConfig, tc_cfg: TranscoderConfig, parent: Transcoder, state: TrainState):
        """A trainer that goes on where a finished run stopped: `parent` as saved (s folded into the decoder, b_pre
        into b_enc) is put back in training form, and the Adam moments, counters and statistics are `state`'s."""
        check_parent_shape(tc_cfg, parent.cfg)
        tc = Transcoder(tc_cfg)
        tc.load_state_dict(parent.state_dict())
        with torch.no_grad():
            for p in (tc.W_dec, tc.b_dec, tc.W_skip):
                if p is not None:
                    p.div_(state.scale)
            tc.b_pre.copy_(state.x_mean)
            tc.b_enc.add_(state.x_mean @ tc.W_enc)  # undoes fold_b_pre
        self = cls.__new__(cls)
        self._setup(cfg, tc, state.y_mean, state.scale)
        params = dict(self._params())
        if set(params) != set(state.adam):
            raise ValueError(
                f"The saved optimizer state holds {sorted(state.adam)}, the transcoder trains {sorted(params)}."
            )
        for name, p in params.items():  # Adam keeps its step count on the CPU, the moments beside the weights
            st = state.adam[name]  # copied: Adam updates its state in place, and `state` stays the parent's
            self.opt.state[p] = {
                k: v.clone() if k == "step" else v.to(self.device, copy=True) for k, v in st.items()
            }
        self.step_no = self.start_step = state.step
        self.tokens = self.start_tokens = state.tokens
        self.since_fired = state.since_fired.to(self.device, torch.long, copy=True)
        return self

    def _params(self) -> list[tuple[str, nn.Parameter]]:
        """The trained parameters, by name (b_pre stays at mean(x))."""
        return [(n, p) for n, p in self.tc.named_parameters() if p.requires_grad]

    def train_state(self) -> TrainState:
        """What a continued run needs besides `finish()`'s weights (references, not copies)."""
        adam = {n: {k: v.detach().cpu() for k, v in self.opt.state[p].items()} for n, p in self._params()}
        return TrainState(
            self.step_no,
            self.tokens,
            self.scale,
            self.tc.b_pre.detach().cpu(),
            self.y_mean.cpu(),
            self.since_fired.cpu(),
            adam,
        )

    @property
    def end_step(self) -> int:
        return self.start_step + self.cfg.steps

    @property
    def done(self) -> bool:
        return self.step_no >= self.end_step

    # ---- schedule ---------------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """lr at step `step` (counted from the lineage's start): warm-up over the first `lr_warmup_steps` of this
        run and linear decay to 0 over its last `lr_decay_frac`, so a continued run re-warms (docs/training.md)."""
        c = self.cfg
        step -= self.start_step
        warm = min(1.0, (step + 1) / max(1, c.lr_warmup_steps))
        decay_start = int(c.steps * (1 - c.lr_decay_frac))
        decay = 1.0 if step < decay_start else max(0.0, (c.steps - step) / max(1, c.steps - decay_start))
        return c.lr * warm * decay

    def l1_at(self, step: int) -> float:
        return self.cfg.l1_coefficient * min(1.0, (step + 1) / max(1, self.cfg.l1_warmup_steps))

    # ---- one step ---------------------------------------------------------------------------------------

    def _forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict, Tensor]:
        """Loss, logged scalars and the fired-feature mask [d_sae] of one batch (y already divided by s)."""
        tc, c = self.tc, self.cfg
        if tc.cfg.architecture == "topk":
            vals, idx, pre = tc.encode_topk_sparse(x)  # [n, k], [n, k], [n, d_sae]
            y_hat = tc.decode_sparse(vals, idx, x)  # [n, d_out]
            fired = torch.zeros(tc.d_sae, dtype=torch.bool, device=x.device)
            fired[idx[vals > 0]] = True
            err = (y - y_hat).pow(2).sum(-1)  # [n]
            aux = self._auxk(x, y - y_hat.detach(), pre)
            sparsity, l0 = aux, (vals > 0).sum(-1).float().mean()
            loss = (self._weights(y) * err).mean() + c.aux_coefficient * aux
        else:
            z = tc.encode(x)  # [n, d_sae]
            y_hat = tc.decode(z, x)  # [n, d_out]
            fired = (z > 0).any(0)
            err = (y - y_hat).pow(2).sum(-1)  # [n]
            sparsity = (z * tc.W_dec.norm(dim=-1)).sum(-1).mean()
            l0 = (z > 0).sum(-1).float().mean()
            loss = (self._weights(y) * err).mean() + self.l1_at(self.step_no) * sparsity
        stats = {"mse": err.detach().mean(), "sparsity_loss": sparsity.detach(), "l0": l0.detach()}
        return loss, stats, fired

    def _weights(self, y: Tensor) -> Tensor:  # y [n, d_out] scaled -> [n] loss weights, 1 for ordinary tokens
        norm = (y - self.y_center).norm(dim=-1).clamp_min(1e-8)
        return (self.cfg.outlier_norm / norm).clamp(max=1.0).pow(2)

    def _auxk(self, x: Tensor, residual: Tensor, pre: Tensor) -> Tensor:
        """AuxK: how well the top `aux_k` dead features reconstruct the residual, as a fraction of its variance."""
        dead = self.since_fired > self.cfg.dead_window_tokens  # [d_sae]
        n_dead = int(dead.sum())
        if n_dead == 0:
            return torch.zeros((), device=x.device)
        k_aux = min(self.cfg.aux_k, n_dead)
        with torch.no_grad():
            idx = (
                pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False).indices
            )  # [n, k_aux]
        vals = self.tc.gather_pre_acts(x, pre, idx).relu()
        e_hat = self.tc.decode_sparse(vals, idx, bias=False)  # [n, d_out]
        var = (residual - residual.mean(0)).pow(2).sum()
        return (e_hat - residual).pow(2).sum() / var.clamp_min(1e-12)

    def step(self, x: Tensor, y: Tensor) -> dict | None:
        """One optimizer step on x [n, d_in], y [n, d_out] (raw units); returns a curve row every log_every steps."""
        c = self.cfg
        x, y = x.to(self.device), (y / self.scale).to(self.device)
        lr = self.lr_at(self.step_no)
        for g in self.opt.param_groups:
            g["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            loss, stats, fired = self._forward(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        topk = self.tc.cfg.architecture == "topk"
        if topk:
            self._project_decoder_grad()
        self.opt.step()
        if topk:
            with torch.no_grad():
                self.tc.W_dec.div_(self.tc.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        self.since_fired += x.shape[0]
        self.since_fired[fired] = 0
        self.step_no += 1
        self.tokens += x.shape[0]
        if not topk and c.resample_every and self.step_no % c.resample_every == 0:
            self._resample(x, y)
        first = self.start_step > 0 and self.step_no == self.start_step + 1  # where a continued run starts
        if self.step_no % c.log_every and self.step_no != self.end_step and not first:
            return None
        mse = stats["mse"].item()
        row = {
            "step": self.step_no,
            "tokens": self.tokens,
            "loss": loss.item(),
            "mse": mse * self.scale**2,
            "sparsity_loss": stats["sparsity_loss"].item(),
            "l0": stats["l0"].item(),
            "fvu": mse / max(y.var(0, unbiased=False).sum().item(), 1e-12),
            "dead_frac": self.dead_frac(),
            "lr": lr,
        }
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(
                f"Training diverged at step {self.step_no} (loss {row['loss']}); lower lr."
            )
        self.curve.append(row)
        return row

    def dead_frac(self) -> float:
        return (self.since_fired > self.cfg.dead_window_tokens).float().mean().item()

    @torch.no_grad()
    def _project_decoder_grad(self) -> None:
        """Remove the gradient component parallel to each (unit) decoder row, so steps rotate rows."""
        w, g = self.tc.W_dec, self.tc.W_dec.grad
        if g is not None:
            g -= (g * w).sum(-1, keepdim=True) * w

    @torch.no_grad()
    def _resample(self, x: Tensor, y: Tensor) -> None:
        """relu: point dead features at badly reconstructed inputs of this batch; reset their Adam moments."""
        dead = (self.since_fired > self.cfg.dead_window_tokens).nonzero().squeeze(-1)
        if dead.numel() == 0:
            return
        tc = self.tc
        err = (y - tc(x)).pow(2).sum(-1)  # [n]
        gen = torch.Generator(device=x.device).manual_seed(self.cfg.seed + self.step_no)
        pick = torch.multinomial(err + 1e-12, dead.numel(), replacement=True, generator=gen)
        xc = x[pick] - tc.b_pre  # [n_dead, d_in]
        alive = self.since_fired <= self.cfg.dead_window_tokens
        enc_norm = tc.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        tc.W_enc[:, dead] = (xc / xc.norm(dim=-1, keepdim=True).clamp_min(1e-8)).T * enc_norm * 0.2
        tc.b_enc[dead] = 0.0
        resid = y[pick] - tc(x[pick])  # [n_dead, d_out]
        tc.W_dec[dead] = resid / resid.norm(dim=-1, keepdim=True).clamp_min(1e-8) * 0.1
        for p, rows in ((tc.W_enc, (slice(None), dead)), (tc.b_enc, (dead,)), (tc.W_dec, (dead,))):
            state = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][rows] = 0.0
        self.since_fired[dead] = 0
        log.info("resampled %d dead features at step %d", dead.numel(), self.step_no)

    # ---- checkpoints ------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "step": self.step_no,
            "tokens": self.tokens,
            "start_step": self.start_step,
            "start_tokens": self.start_tokens,
            "model": self.tc.state_dict(),
            "opt": self.opt.state_dict(),
            "since_fired": self.since_fired,
            "curve": self.curve,
            "scale": self.scale,
            "y_mean": self.y_mean,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step_no, self.tokens = state["step"], state["tokens"]
        self.start_step, self.start_tokens = state.get("start_step", 0), state.get("start_tokens", 0)
        self.tc.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.since_fired = state["since_fired"].to(self.device)
        self.curve, self.scale, self.y_mean = state["curve"], state["scale"], state["y_mean"]
        self.y_center = (self.y_mean / self.scale).to(self.device)

    def finish(self) -> Transcoder:
        """A copy with the target scale folded into the decoder and b_pre into b_enc (the saved form)."""
        out = Transcoder(self.tc.cfg)
        out.load_state_dict(self.tc.state_dict())
        with torch.no_grad():
            out.W_dec.mul_(self.scale)
            out.b_dec.mul_(self.scale)
            if out.W_skip is not None:
                out.W_skip.mul_(self.scale)
            out.fold_b_pre()
        return out.cpu().eval()


def recipe(cfg: TrainConfig, tc_cfg: TranscoderConfig) -> dict:
    """What determines the trained weights besides the data: the transcoder's config (less its provenance) and the
    training config (less device, checkpointing and logging). A checkpoint resumes only with an equal recipe; the
    `transcoders` asset hashes it, with the data, into the version id."""
    shape = {k: v for k, v in dataclasses.asdict(tc_cfg).items() if k != "provenance"}
    train = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k not in ("device", "checkpoint_every", "log_every")
    }
    return {"transcoder": shape, "train": train}


class LayerRun:
    """One transcoder's training inside a stream: its shuffle buffer, and its Trainer from the moment the buffer
    first fills (the first `buffer_tokens` rows give the initial statistics, step 1 of the module docstring; a
    continued run takes its parent's instead, step 7)."""

    def __init__(self, cfg: TrainConfig, tc_cfg: TranscoderConfig, parent: Parent | None = None):
        if parent is not None:
            check_parent_shape(tc_cfg, parent[0].cfg)  # before any forward pass
        self.cfg, self.tc_cfg, self.parent = cfg, tc_cfg, parent
        self.buffer = ShuffleBuffer(cfg.batch_size, cfg.buffer_tokens, cfg.seed)
        self.trainer: Trainer | None = None
        self.stats: tuple[Tensor, Tensor, float, Tensor] | None = None

    @property
    def done(self) -> bool:
        return self.trainer is not None and self.trainer.done

    def key(self) -> dict:
        """What a checkpoint of this run must have been made with: the recipe, and the parent's counters (only for a
        continued run, so that checkpoints of runs from scratch keep their earlier key)."""
        key = recipe(self.cfg, self.tc_cfg)
        if self.parent is not None:
            key["parent"] = {"step": self.parent[1].step, "tokens": self.parent[1].tokens}
        return key

    def feed(self, x: Tensor, y: Tensor, on_log: Callable[[dict], None] | None = None) -> int:
        """Push a chunk (x [n, d_in], y [n, d_out]) and take the steps it frees; returns the steps taken."""
        if self.done:
            return 0
        self.buffer.push(x, y)
        return self._steps(final=False, on_log=on_log)

    def end_of_stream(self, on_log: Callable[[dict], None] | None = None) -> int:
        """The stream is over: train on what the buffer still holds."""
        if self.buffer.held == 0 and self.trainer is None:
            raise ValueError("The activation stream is empty: no training tokens (harvest some first).")
        return self._steps(final=True, on_log=on_log)

    def _steps(self, final: bool, on_log) -> int:
        if self.trainer is None:
            if not (final or self.buffer.full):
                return 0
            self._start()
        taken = 0
        for x, y in self.buffer.release(final):
            row = self.trainer.step(x, y)
            taken += 1
            if row is not None and on_log:
                on_log(row)
            if self.done:
                break
        return taken

    def _start(self) -> None:
        x, y = self.buffer.peek(self.cfg.buffer_tokens)
        if x.shape[-1] != self.tc_cfg.d_in or y.shape[-1] != self.tc_cfg.d_out:
            raise ValueError(
                f"Activations are {x.shape[-1]} -> {y.shape[-1]} wide, transcoder expects "
                f"{self.tc_cfg.d_in} -> {self.tc_cfg.d_out}."
            )
        if self.parent is None:
            self.stats = _init_stats(x, y)
            fit = None
            if self.cfg.skip_init == "lstsq" and self.tc_cfg.skip:
                fit = least_squares_skip(x, y, self.stats[2], self.cfg.outlier_norm)
            self.trainer = Trainer(self.cfg, self.tc_cfg, *self.stats, skip_fit=fit)
        else:
            tc, state = self.parent
            self.stats = (state.x_mean, state.y_mean, state.scale, state.x_mean[None])
            self.trainer = Trainer.continued(self.cfg, self.tc_cfg, tc, state)

    def result(self) -> TrainResult:
        if self.trainer is None:
            raise ValueError("The activation stream ended before training started (too few tokens).")
        if not self.done:
            log.warning(
                "%s: the stream ended after %d of %d steps",
                self.tc_cfg.hook_name,
                self.trainer.step_no - self.trainer.start_step,
                self.cfg.steps,
            )
        t = self.trainer
        return TrainResult(
            t.finish(), t.curve, t.tokens, t.y_mean, t.dead_frac(), t.scale, t.train_state(), t.start_tokens
        )

    def state_dict(self) -> dict:
        return {
            "config": self.key(),
            "buffer": self.buffer.state_dict(),
            "stats": self.stats,
            "trainer": None if self.trainer is None else self.trainer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.stats = state["stats"]
        if state["trainer"] is not None:
            self.trainer = Trainer(self.cfg, self.tc_cfg, *self.stats)
            self.trainer.load_state_dict(state["trainer"])


Stream = Callable[[int], Iterable[Mapping[int, tuple[Tensor, Tensor]]]]
"""stream(start) yields items start, start+1, ... of a stream of {layer: (x [n, d_in], y [n, d_out])}."""


def _save(path: str, consumed: int, runs: Mapping[int, LayerRun]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save({"consumed": consumed, "layers": {k: r.state_dict() for k, r in runs.items()}}, tmp)
    os.replace(tmp, path)


def _resume(path: str | None, runs: Mapping[int, LayerRun]) -> int:
    """Load `path` into `runs` when it was made with the same configs; returns the stream items it consumed."""
    if not path or not os.path.exists(path):
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state["layers"]
    if set(saved) != set(runs) or any(saved[k]["config"] != r.key() for k, r in runs.items()):
        log.warning("checkpoint %s was made with other layers or configs; starting over", path)
        return 0
    for k, run in runs.items():
        run.load_state_dict(saved[k])
    log.info("resuming from %s after %d stream items", path, state["consumed"])
    return state["consumed"]


def train_layers(
    stream: Stream,
    cfgs: Mapping[int, TrainConfig],
    tc_cfgs: Mapping[int, TranscoderConfig],
    checkpoint_path: str | None = None,
    checkpoint_every: int = 0,
    on_log: Callable[[int, dict], None] | None = None,
    progress: bool = True,
    parents: Mapping[int, Parent] | None = None,
) -> dict[int, TrainResult]:
    """Train one transcoder per layer from ONE stream of {layer: (x, y)} items (one forward pass of the model per
    item feeds every layer); each layer steps on its own data exactly as `train` would on that layer's chunks
    alone. Layer k's transcoder has the shape `tc_cfgs[k]` and trains as `cfgs[k]` says.

    Every `checkpoint_every` items (0 = never) the whole state — each layer's weights, optimizer, counters and
    shuffle buffer, and the number of items consumed — is saved atomically to `checkpoint_path`; a killed run
    resumes from it with `stream(consumed)`, so it skips the forward passes already done and ends with the same
    weights as an uninterrupted run.

    `parents[k]`, where given, is a finished run that layer k continues (step 7 of the module docstring) for
    `cfgs[k].steps` more steps; its shape must be `tc_cfgs[k]`.
    """
    if set(cfgs) != set(tc_cfgs):
        raise ValueError(
            f"Training configs for layers {sorted(cfgs)}, transcoder configs for {sorted(tc_cfgs)}."
        )
    parents = parents or {}
    runs = {k: LayerRun(cfgs[k], tc_cfgs[k], parents.get(k)) for k in sorted(cfgs)}
    consumed = _resume(checkpoint_path, runs)
    total_steps = sum(c.steps for c in cfgs.values())
    bar = tqdm(total=total_steps, desc=f"training {len(runs)} layer(s)", disable=not progress)
    bar.update(sum(r.trainer.step_no - r.trainer.start_step for r in runs.values() if r.trainer is not None))
    for item in stream(consumed):
        for k, run in runs.items():
            bar.update(run.feed(*item[k], on_log=(lambda row, k=k: on_log(k, row)) if on_log else None))
        consumed += 1
        if checkpoint_path and checkpoint_every and consumed % checkpoint_every == 0:
            _save(checkpoint_path, consumed, runs)
        if all(r.done for r in runs.values()):
            break
    else:
        for k, run in runs.items():
            bar.update(run.end_of_stream((lambda row, k=k: on_log(k, row)) if on_log else None))
    bar.close()
    return {k: run.result() for k, run in runs.items()}


def _epochs(data: Chunks, start: int) -> Iterator[Mapping[int, tuple[Tensor, Tensor]]]:
    """Chunks of `data` cycled for ever as single-layer stream items, from item `start` on."""
    i = 0
    while True:
        seen = 0
        for chunk in data():
            seen += 1
            if i >= start:
                yield {0: (chunk["x"], chunk["y"])}
            i += 1
        if seen == 0:
            raise ValueError("The activation stream is empty: no training tokens (harvest some first).")


def train(
    data: Chunks,
    cfg: TrainConfig,
    tc_cfg: TranscoderConfig,
    checkpoint_path: str | None = None,
    on_log: Callable[[dict], None] | None = None,
    progress: bool = True,
    parent: Parent | None = None,
) -> TrainResult:
    """Train a transcoder on `data`, chunks cycled for as many epochs as the budget needs (see module docstring);
    checkpoints every `cfg.checkpoint_every` chunks to `checkpoint_path` and resumes from it if it exists.
    `parent`: continue that finished run for `cfg.steps` more steps instead of starting from scratch."""
    return train_layers(
        lambda start: _epochs(data, start),
        {0: cfg},
        {0: tc_cfg},
        checkpoint_path,
        cfg.checkpoint_every,
        (lambda _, row: on_log(row)) if on_log else None,
        progress,
        {0: parent} if parent is not None else None,
    )[0]
