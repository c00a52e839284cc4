"""app/circuits.py on a real attribution graph: interp.attribution on the tiny model, stored by storage.circuits,
drawn and path-ranked by the Circuits page exactly as the in-memory graph ranks its own paths."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from interp.attribution import FeatureTarget, attribute
from interp.transcoder import Transcoder
from storage import layout
from storage.circuits import write_graph
from tests.app.test_pages import PAGES


def test_circuits_page_draws_and_ranks_a_stored_attribution_graph(atlas_db, tiny_model):
    tids = dict(enumerate(atlas_db["transcoders"]))
    transcoders = {layer: Transcoder.load(layout.transcoder_dir(tid)) for layer, tid in tids.items()}
    prompt = "ab<c>d"
    tokens = tiny_model.to_tokens(prompt)[0]  # [pos]
    graph = attribute(tiny_model, tokens, transcoders, FeatureTarget(1, 3, -1), n_paths=6, n_steps=3)
    gid = write_graph(graph, atlas_db["model"], prompt, f"feature:{tids[1]}:3@-1", tids)

    at = AppTest.from_file(str(PAGES["circuits"]), default_timeout=120)
    at.query_params["graph"] = gid
    at.run()
    assert not at.exception, at.exception
    page = "\n".join(m.value for m in at.markdown)
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count("<circle") == len(graph.nodes)
    assert svg.count('class="atlas-node"') == sum(n.kind == "feature" for n in graph.nodes.values())
    shown = [float(v) for v in re.findall(r"<li><code>([+-][\d.]+)</code>", page)]
    expected = [attr for attr, _ in graph.top_paths(10)]
    assert len(expected) >= 3
    assert shown == pytest.approx(expected, rel=1e-3, abs=1e-4)
