"""Interop: a graph exported by storage.graph_export opens in circuit-tracer's own viewer.

circuit-tracer (PyPI, pinned below) goes into its own virtual environment: its declared dependencies (torch,
transformers <= 4.57.3, nnsight) are for computing graphs and clash with ours (transformers 5), and its viewer needs
none of them, so it is installed with --no-deps next to pydantic (its graph models). The test
  1. validates the exported JSON with circuit-tracer's own pydantic `frontend.graph_models.Model`;
  2. serves the exports folder with circuit-tracer's own `frontend.local_server.serve`;
  3. loads the viewer in headless Chromium and waits until it has drawn one node per exported node.
The viewer's page loads d3 and its other libraries from transformer-circuits.pub and unpkg.com, so step 3 needs
those hosts; where they cannot be reached the test fails saying so (it is not skipped).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest
import torch

from interp.attribution import LogitTarget, attribute
from storage import circuits, graph_export
from tests.app.test_browser import CHROMIUM, CHROMIUM_ARGS, _free_port, _require_chromium
from tests.interp.test_edges import make_transcoders

CIRCUIT_TRACER = "circuit-tracer==0.5.0"
VIEWER_LIBS = "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/d3.js"


@pytest.fixture(scope="module")
def ct_python(tmp_path_factory) -> str:
    """Python of a fresh virtual environment holding circuit-tracer (no deps) and pydantic."""
    venv = tmp_path_factory.mktemp("circuit_tracer_venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "pydantic>=2"], check=True)
    subprocess.run([*pip, "--no-deps", CIRCUIT_TRACER], check=True)
    return str(venv / "bin" / "python")


@pytest.fixture
def exported(atlas_home, tiny_model):
    tcs = make_transcoders([0, 1, 2], tiny_model.cfg.d_model, d_sae=48, seed=3)
    with torch.no_grad():
        for tc in tcs.values():
            tc.b_enc.fill_(-0.3)
            tc.W_dec.mul_(0.01)
    tokens = torch.tensor([1, 20, 31, 15, 22, 9, 40, 41])
    graph = attribute(tiny_model, tokens, tcs, LogitTarget(25, 30, -1), 16, 3, node_threshold=0.9)
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


@pytest.mark.browser
def test_circuit_tracer_viewer_draws_the_exported_graph(ct_python, exported, tmp_path):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    path, data = exported
    port = _free_port()
    serve = textwrap.dedent(
        f"""
        import time
        from circuit_tracer.frontend.local_server import serve
        serve(data_dir={os.path.dirname(path)!r}, port={port})
        while True:
            time.sleep(1)
        """
    )
    with open(tmp_path / "viewer.log", "w") as log:
        proc = subprocess.Popen([ct_python, "-c", serve], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_serving(f"{url}/data/graph-metadata.json", proc)
        try:
            urllib.request.urlopen(VIEWER_LIBS, timeout=10).close()
        except OSError as e:
            pytest.fail(
                f"circuit-tracer's viewer loads d3 from {VIEWER_LIBS}, which is unreachable here: {e}"
            )
        slug = data["metadata"]["slug"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/index.html?slug={slug}")
            page.wait_for_selector(".link-graph text.node", timeout=120_000)
            page.screenshot(path=str(tmp_path / "circuit_tracer_viewer.png"), full_page=True)
            assert page.locator(".link-graph text.node").count() == len(data["nodes"]), errors
            assert errors == []
            browser.close()
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
