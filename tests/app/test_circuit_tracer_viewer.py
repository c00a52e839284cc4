"""Interop: a graph exported by storage.graph_export is a valid circuit-tracer graph, served by its own server and
drawn by its own viewer.

circuit-tracer runs from its own virtual environment, CT_VENV, which `make test-deps` builds (the Makefile and
requirements-circuit-tracer.txt pin the versions): its dependencies (transformers <= 4.57.3) clash with ours
(transformers 5). No test here installs or downloads anything. The tests
  1. validate the exported JSON with circuit-tracer's own pydantic `frontend.graph_models.Model`;
  2. serve the exports folder with circuit-tracer's own `frontend.local_server.serve` and read the graph back
     through it (its index lists the graph);
  3. open the served graph in circuit-tracer's own viewer page in headless Chromium and find every exported node
     drawn and every link attached, with no script error; and show that check failing on an export that lacks
     what the viewer parses (a logit label without its '(p=...)').

The viewer page loads its libraries from transformer-circuits.pub and unpkg.com, which no project machine can
reach. The browser serves those URLs from packages of the npm registry instead (VIEWER_LIBS, unpacked by `make
test-deps`): dagre 0.8.5 and pako 2.1.0 are the very files unpkg serves; d3.js is d3 7.9.2;
jetpack_2024-07-20.js is a d3-jetpack build that is on no registry, so npm's d3-jetpack 2.1.0, the
d3-collection its nestBy needs, and viewer_jetpack_adapter.js (the one method the viewer calls that 2.1.0
lacks) stand in for it. The page's live-reload client and .npy reader (graphs use neither) and its feature
examples (fetched from Hugging Face) are refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from interp.attribution import LogitTarget, attribute, attribute_exact
from storage import circuits, graph_export
from tests import conftest
from tests.app.test_browser import CHROMIUM, CHROMIUM_ARGS, _free_port, _require_chromium
from tests.interp.test_edges import make_transcoders

ROOT = Path(__file__).resolve().parents[2]
# `make test-deps`: circuit-tracer with its dependencies; the viewer's registry packages unpacked in npm/
CT_VENV = Path(conftest.CT_VENV)


def _prepared(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make test-deps` (`make test` does).")
    return path


@pytest.fixture(params=["greedy", "exact"])
def exported(request, atlas_home, tiny_model):
    """A graph of each method, stored and exported."""
    tcs = make_transcoders([0, 1, 2], tiny_model.cfg.d_model, d_sae=48, seed=3)
    with torch.no_grad():
        for tc in tcs.values():
            tc.b_enc.fill_(-0.3)
            tc.W_dec.mul_(0.01)
    tokens = torch.tensor([1, 20, 31, 15, 22, 9, 40, 41])
    target = LogitTarget(25, 30, -1)
    if request.param == "exact":
        graph = attribute_exact(tiny_model, tokens, tcs, target, max_feature_nodes=None, node_threshold=0.9)
    else:
        graph = attribute(tiny_model, tokens, tcs, target, 16, 3, node_threshold=0.9)
    assert graph.config["method"] == request.param
    ids = {layer: f"tiny/L{layer}/relu-48" for layer in tcs}
    gid = circuits.write_graph(graph, "tiny", "some prompt", "logit:25-30@7", ids)
    path = graph_export.export_graph(gid)
    return path, json.load(open(path))


def test_exported_json_is_a_valid_circuit_tracer_graph(ct_python, exported):
    path, data = exported
    check = textwrap.dedent(
        """
        import json, sys
        from circuit_tracer.frontend.graph_models import Model
        model = Model.model_validate(json.load(open(sys.argv[1])))
        print(len(model.nodes), len(model.links))
        """
    )
    out = subprocess.run([ct_python, "-c", check, path], check=True, capture_output=True, text=True)
    assert out.stdout.split() == [str(len(data["nodes"])), str(len(data["links"]))]
    assert any(n["feature_type"] == "cross layer transcoder" for n in data["nodes"])


@contextlib.contextmanager
def serving(ct_python: str, folder: str, log_path) -> Iterator[str]:
    """circuit-tracer's own server on a free localhost port, serving the exports `folder`; yields its URL."""
    port = _free_port()
    serve = textwrap.dedent(
        f"""
        import time
        from circuit_tracer.frontend.local_server import serve
        serve(data_dir={folder!r}, port={port})
        while True:
            time.sleep(1)
        """
    )
    with open(log_path, "w") as log:
        proc = subprocess.Popen([ct_python, "-c", serve], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_serving(f"{url}/data/graph-metadata.json", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_serving(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"circuit-tracer's server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if json.load(r)["graphs"]:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"circuit-tracer's server did not serve {url} in {timeout:.0f} s")


def test_circuit_tracer_server_lists_and_serves_the_exported_graph(ct_python, exported, tmp_path):
    path, data = exported
    with serving(ct_python, os.path.dirname(path), tmp_path / "viewer.log") as url:
        slug = data["metadata"]["slug"]
        with urllib.request.urlopen(f"{url}/data/graph-metadata.json", timeout=10) as r:
            assert slug in [g["slug"] for g in json.load(r)["graphs"]]
        with urllib.request.urlopen(f"{url}/data/{slug}.json", timeout=10) as r:
            served = json.load(r)
        assert len(served["nodes"]) == len(data["nodes"]) and served["metadata"] == data["metadata"]


# ---- the viewer in a browser ---------------------------------------------------------------------------------

CDN = "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib"
ADAPTER = Path(__file__).with_name("viewer_jetpack_adapter.js")
# each URL the viewer page loads -> the npm files (package@version/path) served in its place, concatenated
VIEWER_LIBS = {
    f"{CDN}/d3.js": ["d3@7.9.2/dist/d3.js"],
    f"{CDN}/jetpack_2024-07-20.js": [
        "d3-collection@1.0.7/dist/d3-collection.js",
        "d3-jetpack@2.1.0/build/d3-jetpack.js",
        ADAPTER,
    ],
    "https://unpkg.com/dagre@0.8.5/dist/dagre.min.js": ["dagre@0.8.5/dist/dagre.min.js"],
    "https://unpkg.com/pako@2.1.0/dist/pako.min.js": ["pako@2.1.0/dist/pako.min.js"],
}
# loaded by the page, used by no graph: refused, and nothing else may be asked for
REFUSED = {f"{CDN}/hotserver-client-ws.js", f"{CDN}/npy_v0.js"}


@pytest.fixture(scope="module")
def viewer_libs() -> dict[str, str]:
    """VIEWER_LIBS' sources, from the registry packages `make test-deps` unpacked: URL -> JavaScript."""

    def source(f: str | Path) -> str:
        if isinstance(f, Path):
            return f.read_text()
        package, inside = f.split("/", 1)  # 'd3@7.9.2/dist/d3.js' -> 'd3@7.9.2', 'dist/d3.js'
        return (_prepared(CT_VENV / "npm" / package) / "package" / inside).read_text()

    return {url: "\n;\n".join(map(source, parts)) for url, parts in VIEWER_LIBS.items()}


def draw(url: str, slug: str, libs: dict[str, str], shot: Path) -> dict:
    """Open graph `slug` in circuit-tracer's viewer at `url`; return what it drew and every script error."""
    from playwright.sync_api import sync_playwright

    errors, refused = [], []

    def route(r) -> None:
        request = r.request.url
        if request in libs:
            r.fulfill(body=libs[request], content_type="application/javascript")
        elif request.startswith(url):
            r.continue_()
        else:
            refused.append(request)
            r.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route("**/*", route)
        page.goto(f"{url}/index.html?slug={slug}")
        deadline = time.monotonic() + 60
        while not errors and page.locator(".node").count() == 0 and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        page.screenshot(path=str(shot))
        # each drawn node's bound datum: its id, and the links the viewer attached to it
        drawn = page.evaluate(
            "d3.selectAll('.node').data().map(d => [d.node_id, d.sourceLinks.length, d.targetLinks.length])"
        )
        browser.close()
    return {"nodes": drawn, "errors": errors, "refused": refused}


@pytest.mark.browser
def test_circuit_tracer_viewer_draws_every_node_and_link(ct_python, exported, viewer_libs, tmp_path):
    _require_chromium()
    path, data = exported
    with serving(ct_python, os.path.dirname(path), tmp_path / "viewer.log") as url:
        seen = draw(url, data["metadata"]["slug"], viewer_libs, tmp_path / "viewer.png")
    assert seen["errors"] == [] and set(seen["refused"]) <= REFUSED, seen
    ids = [n[0] for n in seen["nodes"]]
    assert sorted(ids) == sorted(n["node_id"] for n in data["nodes"])
    # every link of the export reached both its nodes: in at its target, out at its source
    assert sum(n[1] for n in seen["nodes"]) == sum(n[2] for n in seen["nodes"]) == len(data["links"]) > 0


@pytest.mark.browser
def test_circuit_tracer_viewer_check_fails_on_a_logit_label_without_its_probability(
    ct_python, exported, viewer_libs, tmp_path
):
    """The check can fail: the viewer parses the probability out of each logit node's label (circuit-tracer writes
    'Output "x" (p=0.123)'); an export without it, as ours was before `target_prob`, draws nothing."""
    path, data = exported
    folder = tmp_path / "broken"
    folder.mkdir()
    shutil.copy(Path(path).with_name(graph_export.INDEX), folder / graph_export.INDEX)
    for node in data["nodes"]:
        if node["feature_type"] == "logit":
            node["clerp"] = node["clerp"].rsplit(" (p=", 1)[0]
    (folder / Path(path).name).write_text(json.dumps(data))
    with serving(ct_python, str(folder), tmp_path / "viewer.log") as url:
        seen = draw(url, data["metadata"]["slug"], viewer_libs, tmp_path / "viewer.png")
    assert seen["nodes"] == [] and any("split" in e for e in seen["errors"]), seen
