"""One model per server process: the Live and Steer pages share app.loaded's model, so switching transcoders on
either page loads transcoders, never the model again (Streamlit AppTest against the fixture atlas)."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app import loaded

APP = Path(__file__).resolve().parents[2] / "app"
LIVE = APP / "pages" / "4_Live.py"
STEER = APP / "pages" / "6_Steer.py"


@pytest.fixture
def loads(monkeypatch) -> dict[str, list]:
    """Every model built (TransformerBridge.boot_transformers, under any loader) and every transcoder the app
    reads (app.loaded's reader)."""
    from transformer_lens.model_bridge import TransformerBridge

    seen: dict[str, list] = {"models": [], "transcoders": []}
    boot, load_tc = TransformerBridge.boot_transformers, loaded.load_transcoder

    def counting_boot(*args, **kwargs):
        seen["models"].append(args[0])
        return boot(*args, **kwargs)

    def counting_tc(transcoder_id, *args, **kwargs):
        seen["transcoders"].append(transcoder_id)
        return load_tc(transcoder_id, *args, **kwargs)

    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(counting_boot))
    monkeypatch.setattr(loaded, "load_transcoder", counting_tc)
    st.cache_resource.clear()  # the cache is per process: start from an empty server
    yield seen
    st.cache_resource.clear()


def _run(step) -> AppTest:
    """Run the page (an AppTest) or the rerun a widget change makes (its element); no exception allowed."""
    at = step.run()
    assert not at.exception, at.exception
    return at


def test_switching_transcoders_on_live_and_steer_loads_the_model_once(atlas_db, loads):
    tid0, tid1 = atlas_db["transcoders"][0], atlas_db["transcoders"][1]
    live = _run(AppTest.from_file(str(LIVE), default_timeout=300))
    _run(live.text_area(key="live_text").input("the cat"))
    assert loads["models"] == [atlas_db["model"]] and sorted(loads["transcoders"]) == [tid0, tid1]
    for layers in ([0], [1], [0, 1]):  # each selection is another transcoder set
        _run(live.multiselect(key="live_layers").set_value(layers))
        offered = live.multiselect(key="live_features").options  # the page ran these transcoders on the text
        assert offered and {o.split(" ")[0] for o in offered} <= {f"L{layer}" for layer in layers}
    steer = AppTest.from_file(str(STEER), default_timeout=300)
    steer.query_params.update(model=atlas_db["model"], edits="L1:3:add:4", prompt="the cat")
    _run(steer)
    assert steer.markdown and not steer.error
    _run(steer.selectbox(key="steer_add_layer").set_value(0))
    _run(steer.button(key="steer_add").click())  # a layer-0 edit joins: the layer-0 transcoder is needed too
    assert [e.layer for e in steer.session_state["steer_edits"]] == [1, 0] and not steer.error
    assert loads["models"] == [atlas_db["model"]]  # one model for both pages and every selection
    assert sorted(loads["transcoders"]) == [tid0, tid1]  # each transcoder read once, by id
