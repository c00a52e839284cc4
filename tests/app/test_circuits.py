"""app/circuits.py on a real attribution graph: interp.attribution on the tiny model, stored by storage.circuits,
drawn and path-ranked by the Circuits page exactly as the in-memory graph ranks its own paths."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from streamlit.testing.v1 import AppTest

from interp.attribution import FeatureTarget, attribute
from interp.transcoder import Transcoder
from storage import layout
from storage.circuits import write_graph
from tests.app.test_pages import PAGES, figure, points


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
    # everything but bias/pruned leaves is drawn at threshold 1; the leaves on request
    drawn = points(figure(at))
    leaves = {n for n, node in graph.nodes.items() if node.kind in ("bias", "pruned")}
    assert set(drawn) == set(graph.nodes) - leaves
    at.checkbox(key="show_leaves").check().run()
    assert set(points(figure(at))) == set(graph.nodes)
    # the pruning slider keeps the target, the embeddings and the nodes within the threshold's cumulative share
    at.checkbox(key="show_leaves").uncheck().run()
    at.slider(key="node_threshold").set_value(0.5).run()
    kept = set(points(figure(at)))
    expected = {
        n
        for n, node in graph.nodes.items()
        if node.kind in ("target", "embed")
        or (node.kind not in ("bias", "pruned") and node.cumulative_influence <= 0.5 + 1e-6)
    }
    assert kept == expected and len(kept) < len(drawn)
    shown = [float(v) for v in re.findall(r"<li><code>([+-][\d.]+)</code>", page)]
    expected_paths = [attr for attr, _ in graph.top_paths(10)]
    assert len(expected_paths) >= 3
    assert shown == pytest.approx(expected_paths, rel=1e-3, abs=1e-4)


def test_skip_nodes_are_drawn_as_their_own_kind(atlas_db, tiny_model):
    """A graph over skip transcoders: every skip node is drawn, in the skip legend entry, labelled by its layer."""
    tids = dict(enumerate(atlas_db["transcoders"]))
    g = torch.Generator().manual_seed(6)
    transcoders = {}
    for layer, tid in tids.items():
        tc = Transcoder.load(layout.transcoder_dir(tid))
        twin = Transcoder(dataclasses.replace(tc.cfg, skip=True))
        twin.load_state_dict(
            {**tc.state_dict(), "W_skip": torch.randn(tc.cfg.d_out, tc.cfg.d_in, generator=g)}
        )
        transcoders[layer] = twin
    prompt = "ab<c>d"
    tokens = tiny_model.to_tokens(prompt)[0]  # [pos]
    graph = attribute(tiny_model, tokens, transcoders, FeatureTarget(1, 3, -1), n_paths=12, n_steps=3)
    skips = {n: node for n, node in graph.nodes.items() if node.kind == "skip"}
    assert skips
    gid = write_graph(graph, atlas_db["model"], prompt, f"feature:{tids[1]}:3@-1", tids)
    at = AppTest.from_file(str(PAGES["circuits"]), default_timeout=120)
    at.query_params["graph"] = gid
    at.run()
    assert not at.exception, at.exception
    drawn = points(figure(at))
    assert {n: drawn[n]["trace"] for n in skips} == {n: "transcoder skip path (linear)" for n in skips}
    assert all(drawn[n]["text"] == f"L{node.layer} skip" for n, node in skips.items())
