"""The model, loaded once per process and shared by every asset in it."""

from __future__ import annotations

import functools

from assets import settings
from interp.model import load_model
from storage import layout


@functools.lru_cache(maxsize=2)
def _cached(name: str, device: str, cache_dir: str):
    return load_model(name, device=device, cache_dir=cache_dir)


def model():
    """The atlas model (ATLAS_MODEL on ATLAS_DEVICE), cached per process."""
    return _cached(settings.model_name(), settings.device(), layout.models_dir())
