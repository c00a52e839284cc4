"""The model and transcoders the app runs (the Live page, the Steer page, the card's "try this feature"): loaded
once per server process and shared by every page and session.

One model at a time: a page asking for another model name replaces it, so memory holds one copy. Transcoders are
cached by id and training time (a retrained transcoder reloads), a bounded number of them; switching transcoders
never reloads the model. The device is interp.model.resolve_device's ($ATLAS_DEVICE, else cuda when available), as
in the assets.
"""

from __future__ import annotations

import streamlit as st

from interp.model import load_model, resolve_device
from interp.transcoder import Transcoder
from storage import layout
from storage.transcoders import load_transcoder

MAX_TRANSCODERS = 64  # a few SmolLM2 atlases' worth (30 layers each), ~10 MB apiece at 8x


@st.cache_resource(max_entries=1, show_spinner="Loading the model (once)...")
def model(model_name: str):
    """The model `model_name` (cache dir: $ATLAS_HOME/models), eval mode, no gradients on its weights."""
    return load_model(model_name, device=resolve_device(), cache_dir=layout.models_dir())


@st.cache_resource(max_entries=MAX_TRANSCODERS, show_spinner=False)
def transcoder(transcoder_id: str, created_at: str) -> Transcoder:
    """A stored transcoder on the model's device; `created_at` keys the cache so a retrained one reloads."""
    return load_transcoder(transcoder_id, device=resolve_device()).eval().requires_grad_(False)
