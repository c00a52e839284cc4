"""The atlas model as a Dagster resource: its name and device are run config, the model is loaded once per process.

Empty fields fall back to ATLAS_MODEL / ATLAS_DEVICE when a run starts (not when the definitions load), so
`make atlas` and the UI pick up the environment while tests pass `AtlasModel(name=..., device="cpu")`.
"""

from __future__ import annotations

import functools
import os

import dagster as dg
from pydantic import Field

from interp.model import DEFAULT_MODEL, load_model, load_tokenizer, resolve_device
from storage import layout

RESOURCE_KEY = "atlas_model"


@functools.lru_cache(maxsize=1)  # one model per process: a run's steps share it, a new name replaces it
def _load(name: str, device: str, cache_dir: str):
    return load_model(name, device=device, cache_dir=cache_dir)


class AtlasModel(dg.ConfigurableResource):
    """The model the atlas is built from."""

    name: str = Field(
        default="", description="model name or checkpoint folder; '' = $ATLAS_MODEL or the default"
    )
    device: str = Field(
        default="", description="'cpu', 'cuda', 'cuda:1' or 'auto'; '' = $ATLAS_DEVICE or auto"
    )

    @property
    def model_name(self) -> str:
        return self.name or os.environ.get("ATLAS_MODEL", DEFAULT_MODEL)

    @property
    def torch_device(self) -> str:
        return resolve_device(self.device or None)  # '' -> $ATLAS_DEVICE -> cuda if available, else cpu

    def load(self):
        """The model (a TransformerBridge), loaded on first use in this process and shared after that."""
        return _load(self.model_name, self.torch_device, layout.models_dir())

    def tokenizer(self):
        """The model's tokenizer alone (no weights loaded)."""
        return load_tokenizer(self.model_name, layout.models_dir())
