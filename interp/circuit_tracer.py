"""Interop with circuit-tracer 0.5.0 (safety-research/circuit-tracer): our transcoders as its per-layer transcoders,
our models as its `ReplacementModel`, and its `attribute` run on them, so that its attribution graphs can be
compared with ours (interp/attribution/).

Two environments run this module. The main `.venv` (transformers 5, TransformerLens 3.9 bridge) only *exports*:
`export_transcoders`. The `.venv-ct` that `make test-deps` builds (circuit-tracer with its own pins: transformers
<= 4.57.3, TransformerLens 3.2 `HookedTransformer`) *loads and runs*: `load_transcoder_set`,
`load_replacement_model` and the CLI. So this file imports nothing at module level beyond the standard library and torch
(which both have); circuit_tracer, transformer_lens, transformers and safetensors are imported inside the
functions that need them, and nothing from the rest of `interp` is imported at all.

The export (`export_dir/`):
    config.yaml            circuit-tracer's transcoder-set config (model_kind: transcoder_set, feature_input_hook,
                           feature_output_hook, scan, transcoders: one file per layer, relative to export_dir)
                           plus our keys: activation ('relu' | 'relu_topk'), k, skip, d_model, d_transcoder,
                           n_layers, format.
    layer_<l>.safetensors  circuit-tracer's `SingleLayerTranscoder` state dict, float32:
                           W_enc [d_transcoder, d_model] (ours transposed), b_enc [d_transcoder] (b_pre folded in),
                           W_dec [d_transcoder, d_model], b_dec [d_model], and W_skip [d_model, d_model] when the
                           transcoder has a skip path (the same orientation as ours: both compute x @ W_skip.T).

The model: circuit-tracer's TransformerLens backend, i.e. a `HookedTransformer` built from the checkpoint's
config and TransformerLens' weight conversion, processed the way our `interp.model.load_model` processes it
(compatibility mode: fold_ln, center_writing_weights, center_unembed, fold_value_biases) rather than the way
circuit-tracer's own `from_pretrained` does (fold_ln=False, no centering). With that processing every quantity
the comparison touches is the same vector in both: `blocks.L.ln2.hook_normalized` (the transcoder input: x/rms(x)
for RMSNorm, the centred and scaled x for LayerNorm), `blocks.L.hook_mlp_out` (the transcoder target, mean-free
for LayerNorm models because W_out is centred), the final norm's output (where the target direction is applied)
and the logits. With circuit-tracer's own processing the final norm's output would carry the norm weight and a
LayerNorm model's MLP outputs would keep their mean, so our transcoders' errors and the target would differ.

CLI (in .venv-ct):
    python -m interp.circuit_tracer attribute --model DIR --transcoders EXPORT --tokens 1,2,3 \\
        --target-vector VEC.safetensors --max-feature-nodes N --batch-size B --out OUT.safetensors [--check-logits]
    python -m interp.circuit_tracer check-logits --model DIR --tokens 1,2,3 [--transcoders EXPORT]
    python -m interp.circuit_tracer activations --model DIR --tokens 1,2,3 --out OUT.safetensors [--transcoders EXPORT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from circuit_tracer.transcoder import TranscoderSet

    from interp.transcoder import Transcoder

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
EXPORT_FORMAT = "transcoder-atlas/circuit-tracer-plt/1"
FEATURE_INPUT_HOOK = "ln2.hook_normalized"
"""Relative to `blocks.L`: what our transcoders read (interp.model.mlp_hooks), circuit-tracer's feature_input_hook."""
FEATURE_OUTPUT_HOOK = "hook_mlp_out"
"""Relative to `blocks.L`: what our transcoders reconstruct, circuit-tracer's feature_output_hook."""
DEFAULT_MAX_N_CTX = 2048
"""TransformerLens allocates an n_ctx x n_ctx causal mask per layer: contexts longer than this are not needed here."""
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "GPT2LMHeadModel")


class InteropError(ValueError):
    """Bad input to the interop: a missing file, a layer missing from an export, mismatched sizes."""


def layer_file(layer: int) -> str:
    return f"layer_{layer}.safetensors"


# ---- export (main environment) -------------------------------------------------------------------------------


def _atlas_activation(cfg: Any) -> str:
    return "relu_topk" if cfg.architecture == "topk" else "relu"


def export_transcoders(
    transcoders: Mapping[int, Transcoder], out_dir: str | os.PathLike, model_name: str
) -> str:
    """Write `transcoders` (layer -> our Transcoder, every layer 0..n-1) as a circuit-tracer transcoder set.

    circuit-tracer needs one transcoder per layer, all of one width, one activation and one skip setting, each
    mapping d_model to d_model; anything else is refused here rather than failing later inside circuit-tracer.
    b_pre is folded into b_enc (b_enc - b_pre @ W_enc; circuit-tracer has no input centering), W_enc is
    transposed to [d_transcoder, d_model]. The folder is written under a temporary name and renamed into place,
    replacing an older export, so a failed export leaves nothing half-written. Returns the folder's path.
    """
    import yaml
    from safetensors.torch import save_file

    layers = sorted(transcoders)
    if not layers:
        raise InteropError("No transcoders to export: circuit-tracer needs one per layer 0..n-1.")
    if layers != list(range(len(layers))):
        missing = sorted(set(range(max(layers) + 1)) - set(layers))
        raise InteropError(
            f"Transcoders for layers {layers} leave out layer(s) {missing}: circuit-tracer needs a transcoder on "
            "every layer 0..n-1; train (or load) the missing layers first."
        )
    first = transcoders[0].cfg
    for layer in layers:
        cfg = transcoders[layer].cfg
        if cfg.d_in != cfg.d_out:
            raise InteropError(
                f"Layer {layer}'s transcoder maps d_in={cfg.d_in} to d_out={cfg.d_out}; circuit-tracer's "
                "SingleLayerTranscoder reads and writes the residual width d_model, so both must be equal."
            )
        for name in ("d_in", "d_sae", "architecture", "k", "skip"):
            if getattr(cfg, name) != getattr(first, name):
                raise InteropError(
                    f"Layer {layer}'s transcoder has {name}={getattr(cfg, name)!r} but layer 0's has "
                    f"{getattr(first, name)!r}; a circuit-tracer transcoder set shares width, activation and skip "
                    "setting across layers."
                )
        want_in, want_out = f"blocks.{layer}.{FEATURE_INPUT_HOOK}", f"blocks.{layer}.{FEATURE_OUTPUT_HOOK}"
        if (cfg.hook_name and cfg.hook_name != want_in) or (
            cfg.hook_name_out and cfg.hook_name_out != want_out
        ):
            raise InteropError(
                f"Transcoder for layer {layer} reads {cfg.hook_name!r} and writes {cfg.hook_name_out!r}; the export "
                f"maps it onto {want_in!r} -> {want_out!r} (interp.model.mlp_hooks), so it cannot be exported."
            )

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for layer in layers:
            tc = transcoders[layer]
            with torch.no_grad():
                W_enc = tc.W_enc.detach().float().cpu()  # [d_model, d_sae]
                b_enc = tc.b_enc.detach().float().cpu() - tc.b_pre.detach().float().cpu() @ W_enc
                tensors = {
                    "W_enc": W_enc.T.contiguous(),  # [d_sae, d_model]
                    "b_enc": b_enc.contiguous(),
                    "W_dec": tc.W_dec.detach().float().cpu().contiguous(),  # [d_sae, d_model]
                    "b_dec": tc.b_dec.detach().float().cpu().contiguous(),
                }
                if tc.W_skip is not None:
                    tensors["W_skip"] = tc.W_skip.detach().float().cpu().contiguous()  # [d_out, d_in]
            bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
            if bad:
                raise InteropError(f"Layer {layer}'s transcoder holds NaN/inf in {bad}; re-train the layer.")
            save_file(tensors, str(tmp / layer_file(layer)))
        config = {
            "model_name": model_name,
            "model_kind": "transcoder_set",
            "feature_input_hook": FEATURE_INPUT_HOOK,
            "feature_output_hook": FEATURE_OUTPUT_HOOK,
            "scan": f"transcoder-atlas/{model_name}",
            "transcoders": [layer_file(layer) for layer in layers],
            "activation": _atlas_activation(first),
            "k": first.k if first.architecture == "topk" else None,
            "skip": bool(first.skip),
            "d_model": first.d_in,
            "d_transcoder": first.d_sae,
            "n_layers": len(layers),
            "format": EXPORT_FORMAT,
        }
        with open(tmp / CONFIG_FILE, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
            os.replace(out, old / "export")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %d transcoders (%s) for %s to %s", len(layers), config["activation"], model_name, out)
    return str(out)


# ---- transcoders in circuit-tracer (.venv-ct) -----------------------------------------------------------------


class ReluTopK(nn.Module):
    """Our TopK activation: keep the k largest pre-activations per token, then ReLU them.

    circuit-tracer's own `TopK` (circuit_tracer.transcoder.activation_functions) keeps the k largest
    pre-activations as they are, negative ones included; ours (interp.transcoder.Transcoder.activation for
    'topk') also zeroes the negative ones among them, so a token can have fewer than k active features.
    [..., d_transcoder] -> [..., d_transcoder].
    """

    def __init__(self, k: int):
        super().__init__()
        self.k = int(k)

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, vals.relu())

    def extra_repr(self) -> str:
        return f"k={self.k}"


def read_export_config(export_dir: str | os.PathLike) -> dict[str, Any]:
    """config.yaml of an export, with `transcoders` resolved to absolute paths and every file checked."""
    import yaml

    root = Path(export_dir)
    path = root / CONFIG_FILE
    if not path.is_file():
        raise InteropError(
            f"{path} is missing: {root} is not a transcoder export; write one with "
            "interp.circuit_tracer.export_transcoders (main environment)."
        )
    with open(path) as f:
        config = yaml.safe_load(f)
    need = {"model_kind", "feature_input_hook", "feature_output_hook", "transcoders", "activation"}
    if not isinstance(config, dict) or need - set(config):
        raise InteropError(f"{path} lacks {sorted(need - set(config or {}))}; re-export the transcoders.")
    if config["activation"] not in ("relu", "relu_topk"):
        raise InteropError(
            f"{path}: unknown activation {config['activation']!r}; expected 'relu' or 'relu_topk'."
        )
    files = [Path(p) if os.path.isabs(p) else root / p for p in config["transcoders"]]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise InteropError(
            f"Export {root} lists {len(files)} layers but {missing} are missing: circuit-tracer needs a "
            "transcoder on every layer; re-export the whole set."
        )
    config["transcoders"] = [str(p) for p in files]
    config.setdefault("scan", None)
    return config


def load_transcoder_set(
    export_dir: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> TranscoderSet:
    """An export as a circuit-tracer `TranscoderSet` of `SingleLayerTranscoder`s (skip included), on device.

    'relu' exports load through circuit-tracer's own loader (`circuit_tracer.utils.hf_utils.load_transcoders`
    -> `load_transcoder_set` -> `load_relu_transcoder`, which reads our layer files as they are and picks
    F.relu), so the export is checked against its reader, not only ours. 'relu_topk' exports need our loader:
    circuit-tracer's loaders know only ReLU and JumpReLU, so the `SingleLayerTranscoder`s are built here with
    `ReluTopK` as activation and the same state dicts. Encoders and decoders are loaded eagerly (not lazily).
    """
    from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet
    from safetensors.torch import load_file

    dtype = dtype or torch.float32
    device = torch.device(device)
    config = read_export_config(export_dir)
    if config["activation"] == "relu":
        from circuit_tracer.utils.hf_utils import load_transcoders

        ts = load_transcoders(config, device=device, dtype=dtype, lazy_encoder=False, lazy_decoder=False)
    else:
        if not config.get("k"):
            raise InteropError(
                f"Export {export_dir} is relu_topk but records no k; re-export the transcoders."
            )
        layers = {}
        for layer, path in enumerate(config["transcoders"]):
            sd = load_file(path, device=str(device))
            d_transcoder, d_model = sd["W_enc"].shape
            with torch.device("meta"):
                tc = SingleLayerTranscoder(
                    d_model,
                    d_transcoder,
                    ReluTopK(config["k"]),
                    layer,
                    skip_connection="W_skip" in sd,
                )
            tc.load_state_dict(sd, assign=True)
            layers[layer] = tc.to(device=device, dtype=dtype)
        ts = TranscoderSet(
            layers,
            feature_input_hook=config["feature_input_hook"],
            feature_output_hook=config["feature_output_hook"],
            scan=config["scan"],
        )
    if config.get("skip") is not None and bool(ts.skip_connection) != bool(config["skip"]):
        raise InteropError(f"Export {export_dir}: config says skip={config['skip']} but the files disagree.")
    return ts


# ---- the model in circuit-tracer (.venv-ct) -------------------------------------------------------------------


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _rope_theta(hf_cfg: dict[str, Any]) -> float:
    params = hf_cfg.get("rope_parameters") or hf_cfg.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in (None, "default"):
        raise InteropError(
            f"RoPE type {kind!r} (config rope_parameters/rope_scaling) is not supported by this interop; only "
            "plain RoPE (rope_type 'default') is."
        )
    theta = hf_cfg.get("rope_theta", params.get("rope_theta"))
    if theta is None:
        raise InteropError("The Llama config gives neither rope_theta nor rope_parameters.rope_theta.")
    return float(theta)


@contextlib.contextmanager
def compatible_checkpoint(model_dir: str | os.PathLike) -> Iterator[str]:
    """A folder transformers 4.57 reads as the checkpoint at `model_dir` means it; removed on exit.

    Checkpoints saved by transformers 5 (ours) differ in two places 4.57 reads silently wrong or not at all:
    config.json gives RoPE's base only as rope_parameters.rope_theta (4.57 reads rope_theta and would fall back
    to 10,000: SmolLM2's is 100,000), and tokenizer_config.json names the class 'TokenizersBackend' (4.57 knows
    PreTrainedTokenizerFast). The copy holds corrected versions of those two files and symlinks to the rest.
    """
    src = Path(model_dir)
    if not (src / "config.json").is_file():
        raise InteropError(f"{src} has no config.json: it is not a Hugging Face checkpoint folder.")
    tmp = Path(tempfile.mkdtemp(prefix="ct-checkpoint-"))
    try:
        for entry in src.iterdir():
            if entry.name not in ("config.json", "tokenizer_config.json"):
                (tmp / entry.name).symlink_to(entry.resolve())
        with open(src / "config.json") as f:
            cfg = json.load(f)
        if cfg.get("model_type") == "llama":
            cfg["rope_theta"] = _rope_theta(cfg)
            cfg.pop("rope_parameters", None)
        with open(tmp / "config.json", "w") as f:
            json.dump(cfg, f, indent=2)
        tok_cfg_path = src / "tokenizer_config.json"
        if tok_cfg_path.is_file():
            with open(tok_cfg_path) as f:
                tok_cfg = json.load(f)
            if tok_cfg.get("tokenizer_class") in (None, "TokenizersBackend"):
                tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            for key in ("backend", "is_local", "local_files_only"):
                tok_cfg.pop(key, None)
            with open(tmp / "tokenizer_config.json", "w") as f:
                json.dump(tok_cfg, f, indent=2)
        yield str(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def hooked_transformer_config(hf_config: Any, device: str, dtype: Any, max_n_ctx: int = DEFAULT_MAX_N_CTX):
    """A TransformerLens `HookedTransformerConfig` for a transformers 4.57 Llama or GPT-2 config, with folded
    norms (RMSPre / LNPre), built from the config's own fields: TransformerLens' own converter looks models up by
    official name (SmolLM2 is not on its list) and its generic Llama branch drops rope_theta."""
    from transformer_lens import HookedTransformerConfig

    arch = (hf_config.architectures or [""])[0]
    if arch == "LlamaForCausalLM":
        c = hf_config
        d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        if c.hidden_act != "silu" or getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
            raise InteropError(f"Llama variant not supported (act {c.hidden_act}, attention/MLP biases).")
        rope = getattr(c, "rope_scaling", None)
        if rope and rope.get("rope_type", rope.get("type")) not in (None, "default"):
            raise InteropError(f"RoPE scaling {rope} is not supported by this interop.")
        cfg = dict(
            d_model=c.hidden_size,
            d_head=d_head,
            n_heads=c.num_attention_heads,
            d_mlp=c.intermediate_size,
            n_layers=c.num_hidden_layers,
            n_ctx=min(c.max_position_embeddings, max_n_ctx),
            eps=c.rms_norm_eps,
            d_vocab=c.vocab_size,
            act_fn="silu",
            n_key_value_heads=(
                c.num_key_value_heads if c.num_key_value_heads != c.num_attention_heads else None
            ),
            normalization_type="RMSPre",
            positional_embedding_type="rotary",
            rotary_adjacent_pairs=False,
            rotary_dim=d_head,
            rotary_base=float(c.rope_theta),
            final_rms=True,
            gated_mlp=True,
        )
    elif arch == "GPT2LMHeadModel":
        c = hf_config
        cfg = dict(
            d_model=c.n_embd,
            d_head=c.n_embd // c.n_head,
            n_heads=c.n_head,
            d_mlp=c.n_inner or 4 * c.n_embd,
            n_layers=c.n_layer,
            n_ctx=min(c.n_positions, max_n_ctx),
            eps=c.layer_norm_epsilon,
            d_vocab=c.vocab_size,
            act_fn=c.activation_function,
            use_attn_scale=True,
            use_local_attn=False,
            scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx,
            normalization_type="LNPre",
        )
    else:
        raise InteropError(
            f"Architecture {arch!r} is not supported by the circuit-tracer interop; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    name = Path(getattr(hf_config, "_name_or_path", "") or "model").name
    return HookedTransformerConfig(
        **cfg,
        original_architecture=arch,
        model_name=name,
        tokenizer_name=None,
        init_weights=False,
        device=device,
        dtype=dtype,
        default_prepend_bos=False,
    )


def _load_hf(folder: str, dtype: Any):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True).eval()
    return hf, tok


def _hooked_model(folder: str, hf: Any, tok: Any, cls: Any, device: str, dtype: Any):
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_llama_weights

    cfg = hooked_transformer_config(hf.config, device, dtype)
    convert = (
        convert_llama_weights if cfg.original_architecture == "LlamaForCausalLM" else convert_gpt2_weights
    )
    state = convert(hf, cfg)
    model = cls(cfg, tokenizer=tok)
    # the processing interp.model.load_model applies (TransformerBridge compatibility mode): see the module doc
    model.load_and_process_state_dict(
        state, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
    )
    model.eval()
    return model


def load_replacement_model(
    model_dir: str | os.PathLike,
    transcoder_set: TranscoderSet,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    return_hf: bool = False,
):
    """A circuit-tracer `TransformerLensReplacementModel` for the local checkpoint at `model_dir`, offline.

    HF_HUB_OFFLINE=1 is set for the process; config, weights and tokenizer come from the folder (through
    `compatible_checkpoint`). The weights are processed like `interp.model.load_model`'s (module doc), then
    circuit-tracer's own configuration step wraps the MLPs and unembedding and installs its gradient stops and
    skip hooks. With return_hf, returns (model, the transformers model it was built from) for logit checks.
    """
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )

    _offline()
    dtype = dtype or torch.float32
    with compatible_checkpoint(model_dir) as folder:
        hf, tok = _load_hf(folder, dtype)
        n_layers, d_model = hf.config.num_hidden_layers, hf.config.hidden_size
        if len(transcoder_set) != n_layers:
            raise InteropError(
                f"The transcoder set has {len(transcoder_set)} layers but {model_dir} has {n_layers}: circuit-tracer "
                "needs a transcoder on every layer; export one per layer of this model."
            )
        if transcoder_set[0].d_model != d_model:
            raise InteropError(
                f"The transcoders read d_model={transcoder_set[0].d_model} but {model_dir} has d_model={d_model}: "
                "they were trained for another model."
            )
        model = _hooked_model(folder, hf, tok, TransformerLensReplacementModel, device, dtype)
    model._configure_replacement_model(
        transcoder_set
    )  # circuit-tracer's own setup (its from_* methods call it)
    return (model, hf) if return_hf else model


def load_hooked_model(model_dir: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | None = None):
    """(The plain `HookedTransformer` of `model_dir`, processed as in `load_replacement_model`, and the
    transformers model it came from): for logit checks without transcoders."""
    from transformer_lens import HookedTransformer

    _offline()
    dtype = dtype or torch.float32
    with compatible_checkpoint(model_dir) as folder:
        hf, tok = _load_hf(folder, dtype)
        return _hooked_model(folder, hf, tok, HookedTransformer, device, dtype), hf


def logits_difference(model: Any, hf: Any, tokens: torch.Tensor) -> dict[str, float]:
    """How far `model`'s logits are from transformers' own on `tokens` [n_pos].

    Our processing centres the unembedding (so each position's logits have mean 0 over the vocabulary), which
    shifts every logit of a position by one constant; the comparison therefore centres both sides first.
    Returns max |centred difference| and max |difference of log-softmax|.
    """

    with torch.no_grad():
        ours = model(tokens[None].to(model.cfg.device)).float().cpu()[0]
        ref = hf(tokens[None].to(hf.device)).logits.float().cpu()[0]
    centred = (ours - ours.mean(-1, keepdim=True)) - (ref - ref.mean(-1, keepdim=True))
    logp = ours.log_softmax(-1) - ref.log_softmax(-1)
    return {
        "max_abs_diff_centred": centred.abs().max().item(),
        "max_abs_diff_log_softmax": logp.abs().max().item(),
    }


# ---- the CLI (.venv-ct) ---------------------------------------------------------------------------------------


def _parse_tokens(text: str) -> list[int]:
    try:
        tokens = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as e:
        raise InteropError(f"--tokens must be comma-separated token ids, got {text!r}.") from e
    if not tokens:
        raise InteropError("--tokens is empty.")
    return tokens


def _check_tokens(tokens: list[int], model: Any) -> None:
    bad = [t for t in tokens if not 0 <= t < model.cfg.d_vocab]
    if bad:
        raise InteropError(f"Token ids {bad} are outside the vocabulary 0..{model.cfg.d_vocab - 1}.")
    if len(tokens) > model.cfg.n_ctx:
        raise InteropError(f"{len(tokens)} tokens exceed the model's loaded context of {model.cfg.n_ctx}.")


def _atomic_save(tensors: dict[str, Any], out: str, sidecar: dict[str, Any] | None = None) -> None:
    from safetensors.torch import save_file

    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    if sidecar is not None:
        tmp_json = out_path.with_name(f".{out_path.name}.json.tmp")
        with open(tmp_json, "w") as f:
            json.dump(sidecar, f, indent=2)
        os.replace(tmp_json, out_path.with_suffix(".json"))
    os.replace(tmp, out_path)


def _maxrss_mib() -> float:
    """The process's peak resident memory so far (ru_maxrss; Linux reports KiB), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-memory high-water mark (VmHWM) of this process: Linux's
    `echo 5 > /proc/self/clear_refs`. False where that is not possible (not Linux, restricted /proc)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _load_target_vector(path: str, d_model: int):
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise InteropError(f"--target-vector {path} does not exist.")
    tensors = load_file(path)
    if "vector" not in tensors:
        raise InteropError(f"--target-vector {path} has keys {sorted(tensors)}; it needs 'vector' [d_model].")
    vec = tensors["vector"].float()
    if vec.shape != (d_model,):
        raise InteropError(
            f"--target-vector 'vector' has shape {tuple(vec.shape)}; the model needs ({d_model},)."
        )
    return vec


def cmd_attribute(args: argparse.Namespace) -> dict[str, Any]:
    """Run circuit-tracer's `attribute` with one CustomTarget and write the graph (see `main`'s help)."""
    import circuit_tracer
    from circuit_tracer import attribute
    from circuit_tracer.attribution.targets import CustomTarget
    from circuit_tracer.graph import compute_graph_scores

    rss_start = _maxrss_mib()
    ts = load_transcoder_set(args.transcoders, device=args.device)
    model, hf = load_replacement_model(args.model, ts, device=args.device, return_hf=True)
    tokens = _parse_tokens(args.tokens)
    _check_tokens(tokens, model)
    vec = _load_target_vector(args.target_vector, model.cfg.d_model)
    input_ids = torch.tensor(tokens, dtype=torch.long)
    if tokens[0] not in model.tokenizer.all_special_ids:
        log.warning(
            "the first token %d is not a special token: circuit-tracer prepends one (n_pos grows by 1)",
            tokens[0],
        )
    target = CustomTarget(token_str="target", prob=1.0, vec=vec.to(args.device))
    rss_before = _maxrss_mib()
    resident_before = _proc_status_mib("VmRSS")
    hwm_reset = _reset_peak_rss()
    t0 = time.perf_counter()
    graph = attribute(
        input_ids,
        model,
        attribution_targets=[target],
        max_feature_nodes=args.max_feature_nodes,
        batch_size=args.batch_size,
    )
    seconds = time.perf_counter() - t0
    rss_after = _maxrss_mib()
    peak_during = _proc_status_mib("VmHWM") if hwm_reset else None
    replacement, completeness = compute_graph_scores(graph)

    ids = graph.input_tokens.cpu()
    hook = "ln_final.hook_normalized"
    with torch.no_grad():
        _, cache = model.run_with_cache(ids[None].to(args.device), names_filter=[hook])
    final = cache[hook][0, -1].float().cpu()  # the final norm's output at the last position [d_model]
    target_value = float(final @ vec)

    n_layers, n_pos = model.cfg.n_layers, len(ids)
    tensors = {
        "active_features": graph.active_features.cpu().to(torch.int64),
        "activation_values": graph.activation_values.cpu().float(),
        "selected_features": graph.selected_features.cpu().to(torch.int64),
        "adjacency_matrix": graph.adjacency_matrix.cpu().float(),
        "input_tokens": ids.to(torch.int64),
        "logit_vector": vec.cpu().float(),
    }
    sidecar: dict[str, Any] = {
        "circuit_tracer_version": circuit_tracer.__version__,
        "model": str(args.model),
        "transcoders": str(args.transcoders),
        "n_layers": n_layers,
        "n_pos": n_pos,
        "n_active_features": int(tensors["active_features"].shape[0]),
        "n_selected_features": int(tensors["selected_features"].shape[0]),
        "n_nodes": int(tensors["adjacency_matrix"].shape[0]),
        "node_order": "selected features (order of selected_features, i.e. of active_features), errors "
        "(layer-major: layer * n_pos + pos), tokens (pos), logits (the one target)",
        "max_feature_nodes": args.max_feature_nodes,
        "batch_size": args.batch_size,
        "replacement_score": replacement,
        "completeness_score": completeness,
        "target_value": target_value,
        "target_value_note": "logit_vector . ln_final.hook_normalized[last position]; circuit-tracer uses a "
        "CustomTarget vec as given (token targets are demeaned over the vocabulary, custom ones are not)",
        "attribute_seconds": seconds,
        "peak_rss_mib": rss_after,
        "peak_rss_mib_before_attribute": rss_before,
        "peak_rss_mib_at_start": rss_start,
        "peak_rss_note": "peak_rss_mib*: ru_maxrss of the whole process (MiB), the peak so far at that point "
        "(start: before loading anything; before_attribute: after loading model and transcoders)",
        "rss_mib_before_attribute": resident_before,
        "peak_rss_mib_during_attribute": peak_during,
        "peak_rss_during_attribute_note": "the kernel's resident high-water mark (VmHWM), reset just before "
        "attribute() and read just after: the process's peak resident memory while attribute() ran, model and "
        "transcoders included; minus rss_mib_before_attribute, what attribute() added at its peak. null where "
        "the reset is not possible",
        "device": args.device,
    }
    if args.check_logits:
        sidecar["logits_check"] = logits_difference(model, hf, ids)
    _atomic_save(tensors, args.out, sidecar)
    return sidecar


def cmd_check_logits(args: argparse.Namespace) -> dict[str, Any]:

    tokens = torch.tensor(_parse_tokens(args.tokens), dtype=torch.long)
    if args.transcoders:
        model, hf = load_replacement_model(
            args.model, load_transcoder_set(args.transcoders, device=args.device), args.device, return_hf=True
        )
    else:
        model, hf = load_hooked_model(args.model, args.device)
    _check_tokens(tokens.tolist(), model)
    return logits_difference(model, hf, tokens)


def cmd_activations(args: argparse.Namespace) -> dict[str, Any]:
    """Write what circuit-tracer's model computes on --tokens: logits [n_pos, d_vocab], and per layer L
    `mlp_in.L` (feature_input_hook) and `mlp_out.L` (hook_mlp_out), [n_pos, d_model]; with --transcoders also
    circuit-tracer's transcoder encode `acts.L` [n_pos, d_transcoder] and decode `recon.L` [n_pos, d_model] on
    those inputs, and the logits of transformers' own model `hf_logits`."""

    tokens = torch.tensor(_parse_tokens(args.tokens), dtype=torch.long)
    if args.transcoders:
        ts = load_transcoder_set(args.transcoders, device=args.device)
        model, hf = load_replacement_model(args.model, ts, args.device, return_hf=True)
    else:
        ts = None
        model, hf = load_hooked_model(args.model, args.device)
    _check_tokens(tokens.tolist(), model)
    names = [
        f"blocks.{layer}.{h}"
        for layer in range(model.cfg.n_layers)
        for h in (FEATURE_INPUT_HOOK, FEATURE_OUTPUT_HOOK)
    ]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens[None].to(args.device), names_filter=names)
        out = {"logits": logits[0].float().cpu(), "hf_logits": hf(tokens[None]).logits[0].float().cpu()}
        for layer in range(model.cfg.n_layers):
            x = cache[f"blocks.{layer}.{FEATURE_INPUT_HOOK}"][0]
            out[f"mlp_in.{layer}"] = x.float().cpu()
            out[f"mlp_out.{layer}"] = cache[f"blocks.{layer}.{FEATURE_OUTPUT_HOOK}"][0].float().cpu()
            if ts is not None:
                acts = ts[layer].encode(x)
                out[f"acts.{layer}"] = acts.float().cpu()
                out[f"recon.{layer}"] = ts[layer].decode(acts, x).float().cpu()
    _atomic_save(out, args.out)
    return {"out": args.out, "n_layers": model.cfg.n_layers, "n_pos": len(tokens)}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m interp.circuit_tracer",
        description="Run circuit-tracer 0.5.0 on our models and transcoders (in .venv-ct, offline).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, transcoders_required: bool) -> None:
        p.add_argument("--model", required=True, help="local Hugging Face checkpoint folder")
        p.add_argument(
            "--transcoders", required=transcoders_required, help="folder written by export_transcoders"
        )
        p.add_argument("--tokens", required=True, help="comma-separated token ids, e.g. 1,20,31")
        p.add_argument("--device", default="cpu")

    p = sub.add_parser(
        "attribute",
        help="circuit-tracer's attribute() for one custom target; writes OUT.safetensors and OUT.json",
        description="OUT.safetensors: active_features [n,3] int64 (layer, pos, feature), activation_values [n], "
        "selected_features [m] (indices into active_features), adjacency_matrix [N,N] float32 (row = target, "
        "column = source; node order: m selected features, n_layers*n_pos errors layer-major, n_pos tokens, "
        "1 logit), input_tokens [n_pos], logit_vector [d_model] (the target vector as used). OUT.json: scores, "
        "timing, memory, sizes.",
    )
    common(p, True)
    p.add_argument(
        "--target-vector",
        required=True,
        help="safetensors file with 'vector' [d_model]: the direction at the final norm's output (last position)",
    )
    p.add_argument("--max-feature-nodes", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--check-logits", action="store_true", help="also record logits vs transformers' in OUT.json"
    )
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser(
        "check-logits", help="print max |logits - transformers' logits| (centred) on the tokens"
    )
    common(p, False)
    p.set_defaults(func=cmd_check_logits)

    p = sub.add_parser(
        "activations", help="write logits, MLP inputs/outputs and transcoder outputs (for tests)"
    )
    common(p, False)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_activations)

    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except InteropError as e:
        log.error("%s", e)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
