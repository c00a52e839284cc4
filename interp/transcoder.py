"""The transcoder: a wide, sparsely-activating MLP trained to imitate one dense MLP layer.

    z     = act(x @ W_enc + b_enc)          # [.., d_sae]   act = ReLU | TopK(k) then ReLU
    y_hat = z @ W_dec + b_dec (+ x @ W_skip.T) # [.., d_out]

x is the normalized MLP input (`blocks.L.ln2.hook_normalized`), y the MLP output (`blocks.L.hook_mlp_out`).
The paper's ReLU + L1 transcoder penalizes sum_i |z_i| * ||W_dec[i]||, so decoder rows are free in norm
(docs/training.md, "The model"); TopK needs no penalty.

Training keeps an input-centering parameter b_pre (initialized to mean(x)); `fold_b_pre()` folds it into b_enc,
which is the only form ever saved. Files are the SAELens layout: `cfg.json` + `sae_weights.safetensors`
with W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out] (+ W_skip [d_out, d_in], as in
SAELens' SkipTranscoder). SAELens 6.54 loads 'relu' as `transcoder` / `skip_transcoder` and 'topk' (d_in == d_out,
no skip) as its `topk` SAE, which computes the same function; it has no TopK transcoder with a skip connection.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

ARCHITECTURES = ("relu", "topk")
WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"


class TranscoderFileError(ValueError):
    pass


# torch warns once per process when a sparse tensor skips invariant checks; ours are valid by construction
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


class _GatherPreActs(torch.autograd.Function):
    """pre[n, idx[n, j]] for pre = x @ W_enc + b_enc already computed, with a sparse backward pass.

    The gradient reaches only the gathered columns: dW_enc[:, i] = sum_{n,j: idx[n,j]=i} dvals[n, j] x[n], one
    sparse-dense matmul of n*k*d_in FLOPs instead of the dense n*d_sae*d_in. x is data (no gradient).
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(x, idx)
        ctx.d_sae = W_enc.shape[1]
        return pre.gather(-1, idx)  # [n, k]

    @staticmethod
    def backward(ctx, dvals: Tensor):  # dvals [n, k]
        x, idx = ctx.saved_tensors
        n, k = idx.shape
        rows = torch.arange(n, device=idx.device).repeat_interleave(k)
        dv = dvals.reshape(-1).to(x.dtype)  # float32 even under bf16 autocast
        sel = torch.sparse_coo_tensor(torch.stack([idx.reshape(-1), rows]), dv, (ctx.d_sae, n))  # [d_sae, n]
        d_w = torch.sparse.mm(sel, x).T  # [d_in, d_sae]
        d_b = torch.zeros(ctx.d_sae, dtype=x.dtype, device=x.device).index_add_(0, idx.reshape(-1), dv)
        return None, d_w, d_b, None, None


EXPANSION_FACTOR = 8
"""The default width, d_sae = EXPANSION_FACTOR x d_in (4,608 features for SmolLM2's d_model of 576)."""


@dataclass
class TranscoderConfig:
    """A transcoder's shape and where it sits in its model: everything `cfg.json` records about it.

    The defaults are the atlas's transcoder. d_sae is a concrete width, as files store it; configs a person writes
    give an expansion factor instead (`TranscoderConfig.expanded`).
    """

    d_in: int
    d_sae: int
    d_out: int
    architecture: str = "topk"
    """'topk' (sparse steps, fast on CPU, no L1 coefficient to tune) or 'relu' (ReLU + L1, the paper)."""
    k: int | None = 32
    """topk: active features per token, at most (the L0 quality goal of interp/quality.py); relu ignores it."""
    skip: bool = True
    """Also learn a linear skip connection x @ W_skip.T (SmolLM2 FVU at layer 0: 0.21 -> 0.10, layer 8: 0.50 ->
    0.43)."""
    hook_name: str = ""
    """The input hook, e.g. 'blocks.5.ln2.hook_normalized'."""
    hook_name_out: str = ""
    """The output hook, e.g. 'blocks.5.hook_mlp_out'."""
    model_name: str = ""
    layer: int = -1
    provenance: dict[str, Any] = field(default_factory=dict)
    """Corpus, tokens, seed, code version, ..."""

    def __post_init__(self) -> None:
        if min(self.d_in, self.d_sae, self.d_out) < 1:
            raise ValueError(
                f"Transcoder sizes must be positive, got d_in={self.d_in}, d_sae={self.d_sae}, d_out={self.d_out}."
            )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"Unknown transcoder architecture {self.architecture!r}; use one of {ARCHITECTURES}."
            )
        if self.architecture == "topk" and not (self.k and 0 < self.k <= self.d_sae):
            raise ValueError(f"TopK transcoder needs 0 < k <= d_sae, got k={self.k}, d_sae={self.d_sae}.")

    @classmethod
    def expanded(
        cls, d_in: int, d_out: int, expansion_factor: int = EXPANSION_FACTOR, **fields: Any
    ) -> TranscoderConfig:
        """The config with d_sae = expansion_factor x d_in; `fields` are the other fields."""
        if expansion_factor < 1:
            raise ValueError(f"expansion_factor must be at least 1, got {expansion_factor}.")
        return cls(d_in=d_in, d_sae=expansion_factor * d_in, d_out=d_out, **fields)


class Transcoder(nn.Module):
    def __init__(self, cfg: TranscoderConfig):
        super().__init__()
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_out))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        self.b_pre = nn.Parameter(torch.zeros(cfg.d_in))
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in)) if cfg.skip else None
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Decoder rows: random unit vectors; encoder = decoder transpose scaled (a common, stable init)."""
        with torch.no_grad():
            w = torch.randn(self.cfg.d_sae, self.cfg.d_out, generator=generator)
            w /= w.norm(dim=-1, keepdim=True)
            self.W_dec.copy_(w * 0.1)
            if self.cfg.d_in == self.cfg.d_out:
                self.W_enc.copy_(w.T)
            else:
                self.W_enc.copy_(
                    torch.randn(self.cfg.d_in, self.cfg.d_sae, generator=generator) / self.cfg.d_in**0.5
                )
            self.b_enc.zero_()
            self.b_dec.zero_()
            self.b_pre.zero_()

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def pre_acts(self, x: Tensor) -> Tensor:  # x [..., d_in] -> [..., d_sae]
        pre = torch.addmm(self.b_enc, (x - self.b_pre).reshape(-1, x.shape[-1]), self.W_enc)  # fused bias add
        return pre.reshape(*x.shape[:-1], self.cfg.d_sae)

    def activation(self, pre: Tensor) -> Tensor:  # [..., d_sae] -> [..., d_sae]
        if self.cfg.architecture == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
        return pre.relu()

    def encode(self, x: Tensor) -> Tensor:  # [..., d_in] -> z [..., d_sae]
        return self.activation(self.pre_acts(x))

    def encode_active(self, x: Tensor) -> Tensor:  # x [n, d_in] -> z [n, d_sae], sparse COO, coalesced
        """encode(x) as a sparse tensor of its nonzero entries. TopK builds it from topk directly: no dense z and no
        scan for its nonzeros (the pre-activations are still dense)."""
        if self.cfg.architecture != "topk":
            return self.encode(x).to_sparse().coalesce()
        vals, idx = self.pre_acts(x).topk(self.cfg.k, dim=-1, sorted=False)  # [n, k]
        keep = vals > 0
        rows = torch.arange(len(x), device=x.device).unsqueeze(1).expand_as(idx)[keep]
        z = torch.sparse_coo_tensor(torch.stack([rows, idx[keep]]), vals[keep], (len(x), self.cfg.d_sae))
        return z.coalesce()

    def encode_topk_sparse(self, x: Tensor, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """TopK as (values [n, k], indices [n, k], all pre-activations [n, d_sae] without grad).

        Same result as `encode` for 'topk', but backpropagates only through the k chosen pre-activations.
        """
        k = k or self.cfg.k
        with torch.no_grad():
            pre = self.pre_acts(x)  # [n, d_sae]
            idx = pre.topk(k, dim=-1, sorted=False).indices  # [n, k]
        return self.gather_pre_acts(x, pre, idx).relu(), idx, pre

    def gather_pre_acts(self, x: Tensor, pre: Tensor, idx: Tensor) -> Tensor:
        """pre.gather(-1, idx) [n, k] for pre = pre_acts(x), differentiable w.r.t. W_enc / b_enc (sparse backward)."""
        return _GatherPreActs.apply(x - self.b_pre, self.W_enc, self.b_enc, pre, idx)

    def decode_sparse(self, vals: Tensor, idx: Tensor, x: Tensor | None = None, bias: bool = True) -> Tensor:
        """sum_j vals[n, j] W_dec[idx[n, j]] (+ b_dec, + x @ W_skip.T): a gather of k decoder rows per token."""
        out = torch.nn.functional.embedding_bag(
            idx, self.W_dec, per_sample_weights=vals.to(self.W_dec.dtype), mode="sum"
        )  # [n, d_out]
        if bias:
            out = out + self.b_dec
        if self.W_skip is not None and x is not None:
            out = out + self.skip_out(x)
        return out

    def skip_out(self, x: Tensor) -> Tensor:  # x [..., d_in] -> [..., d_out]; the linear skip path
        return x @ self.W_skip.T

    def decode(self, z: Tensor, x: Tensor | None = None) -> Tensor:  # z [..., d_sae] -> [..., d_out]
        out = z @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise ValueError("This transcoder has a skip connection; decode(z, x) needs the input x.")
            out = out + self.skip_out(x)
        return out

    def forward(self, x: Tensor) -> Tensor:  # [..., d_in] -> y_hat [..., d_out]
        return self.decode(self.encode(x), x)

    @torch.no_grad()
    def fold_b_pre(self) -> None:
        """Fold input centering into b_enc: (x - b_pre) W_enc + b_enc == x W_enc + (b_enc - b_pre W_enc)."""
        self.b_enc -= self.b_pre @ self.W_enc  # the skip path reads x itself, so it needs no change
        self.b_pre.zero_()

    # ---- files -------------------------------------------------------------------------------------------

    def state_for_saving(self) -> dict[str, Tensor]:
        folded = Transcoder(self.cfg)
        folded.load_state_dict(self.state_dict())
        folded.fold_b_pre()
        tensors = {
            k: v.detach().contiguous().cpu().float() for k, v in folded.state_dict().items() if k != "b_pre"
        }
        return tensors

    def save(self, directory: str) -> None:
        """Write cfg.json + sae_weights.safetensors (SAELens `SAE.load_from_disk` reads this)."""
        os.makedirs(directory, exist_ok=True)
        save_file(self.state_for_saving(), os.path.join(directory, WEIGHTS_FILE))
        with open(os.path.join(directory, CFG_FILE), "w") as f:
            json.dump(saelens_cfg(self.cfg), f, indent=2)

    @classmethod
    def load(cls, directory: str, device: str | torch.device = "cpu") -> Transcoder:
        """Load a transcoder saved by `save` (or by SAELens, for the architectures listed above)."""
        cfg_path, w_path = os.path.join(directory, CFG_FILE), os.path.join(directory, WEIGHTS_FILE)
        for p in (cfg_path, w_path):
            if not os.path.exists(p):
                raise TranscoderFileError(
                    f"Transcoder file {p} is missing; re-materialize the `transcoders` asset."
                )
        try:
            with open(cfg_path) as f:
                cfg = config_from_saelens(json.load(f))
            tensors = load_file(w_path, device=str(device))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise TranscoderFileError(
                f"Transcoder config {cfg_path} is unreadable ({e}); re-train the layer."
            ) from e
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise TranscoderFileError(
                f"Transcoder weights {w_path} are corrupt ({e}); re-train the layer."
            ) from e
        tc = cls(cfg).to(device)
        tensors.setdefault("b_pre", torch.zeros(cfg.d_in, device=device))
        missing = set(tc.state_dict()) - set(tensors)
        if missing:
            raise TranscoderFileError(
                f"Transcoder weights {w_path} lack {sorted(missing)}; re-train the layer."
            )
        try:
            tc.load_state_dict({k: tensors[k] for k in tc.state_dict()})
        except RuntimeError as e:
            raise TranscoderFileError(f"Transcoder weights {w_path} do not match {cfg_path} ({e}).") from e
        bad = [k for k, v in tc.state_dict().items() if not torch.isfinite(v).all()]
        if bad:
            raise TranscoderFileError(
                f"Transcoder weights {w_path} hold NaN/inf in {bad}; re-train the layer."
            )
        return tc


def load_paper_checkpoint(path: str, device: str | torch.device = "cpu") -> Transcoder:
    """A transcoder released with Dunefsky et al. 2024 (transcoder_circuits): torch .pt of {'cfg', 'state_dict'}.

    Their forward is z = ReLU((x - b_dec) @ W_enc + b_enc), y_hat = z @ W_dec + b_dec_out, so their input-side
    b_dec [d_in] is our b_pre and b_dec_out [d_out] our b_dec. `cfg` may be a dict or an object with attributes
    (hook_point, hook_point_layer, out_hook_point, model_name); sizes come from the weights.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        sd, raw = ckpt["state_dict"], ckpt.get("cfg", {})
    except Exception as e:
        raise TranscoderFileError(
            f"{path} is not a readable transcoder checkpoint with 'cfg' and 'state_dict' ({e})."
        ) from e
    missing = {"W_enc", "b_enc", "W_dec", "b_dec", "b_dec_out"} - set(sd)
    if missing:
        raise TranscoderFileError(f"Transcoder checkpoint {path} lacks {sorted(missing)} in its state_dict.")

    def get(name: str, default: Any = None) -> Any:
        return raw.get(name, default) if isinstance(raw, dict) else getattr(raw, name, default)

    d_in, d_sae = sd["W_enc"].shape
    layer = get("hook_point_layer", -1)
    cfg = TranscoderConfig(
        d_in=d_in,
        d_sae=d_sae,
        d_out=sd["W_dec"].shape[1],
        architecture="relu",
        k=None,
        skip=False,
        hook_name=get("hook_point", ""),
        hook_name_out=get("out_hook_point", ""),
        model_name=get("model_name", ""),
        layer=layer if isinstance(layer, int) else -1,
        provenance={"source": str(path), "format": "transcoder_circuits"},
    )
    tc = Transcoder(cfg)
    with torch.no_grad():
        for ours, theirs in (
            ("W_enc", "W_enc"),
            ("b_enc", "b_enc"),
            ("W_dec", "W_dec"),
            ("b_pre", "b_dec"),
            ("b_dec", "b_dec_out"),
        ):
            getattr(tc, ours).copy_(sd[theirs].float())
    return tc.to(device)


def saelens_architecture(cfg: TranscoderConfig) -> str:
    """The SAELens 6.54 architecture computing the same function (names starting 'atlas_' have none)."""
    if cfg.architecture == "relu":
        return "skip_transcoder" if cfg.skip else "transcoder"
    if cfg.skip or cfg.d_in != cfg.d_out:
        return "atlas_topk_skip" if cfg.skip else "atlas_topk_transcoder"
    return "topk"


def saelens_cfg(cfg: TranscoderConfig) -> dict[str, Any]:
    """cfg.json in the layout SAELens 6.x loads (`architecture: transcoder`), plus our own fields."""
    arch = saelens_architecture(cfg)
    out: dict[str, Any] = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "d_out": cfg.d_out,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": cfg.model_name,
            "hook_name": cfg.hook_name,
            "hook_name_out": cfg.hook_name_out,
            "hook_layer": cfg.layer,
            "hook_layer_out": cfg.layer,
        },
        "atlas": asdict(cfg),
    }
    if cfg.architecture == "topk":
        out["k"] = cfg.k
    return out


def config_from_saelens(d: dict[str, Any]) -> TranscoderConfig:
    if "atlas" in d:
        return TranscoderConfig(**d["atlas"])
    arch = d.get("architecture", "transcoder")
    meta = d.get("metadata", {})
    return TranscoderConfig(
        d_in=d["d_in"],
        d_sae=d["d_sae"],
        d_out=d.get("d_out", d["d_in"]),
        architecture="topk" if "topk" in arch else "relu",
        k=d.get("k"),
        skip="skip" in arch,
        hook_name=meta.get("hook_name", d.get("hook_name", "")),
        hook_name_out=meta.get("hook_name_out", d.get("hook_name_out", "")),
        model_name=meta.get("model_name", d.get("model_name", "")),
        layer=meta.get("hook_layer", d.get("hook_layer", -1)),
    )
