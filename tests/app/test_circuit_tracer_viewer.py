"""Interop: a graph exported by storage.graph_export is a valid circuit-tracer graph, served by its own server.

circuit-tracer (PyPI, pinned below) goes into its own virtual environment: its declared dependencies (torch,
transformers <= 4.57.3, nnsight) are for computing graphs and clash with ours (transformers 5), and its viewer needs
none of them, so it is installed with --no-deps next to pydantic (its graph models). The tests
  1. validate the exported JSON with circuit-tracer's own pydantic `frontend.graph_models.Model`;
  2. serve the exports folder with circuit-tracer's own `frontend.local_server.serve` and read the graph back
     through it (its index lists the graph).
Drawing it in the viewer is not tested: the viewer's page loads d3, jetpack and npy readers from
transformer-circuits.pub (and dagre, pako from unpkg.com), which no machine of this project can reach.
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
from tests.app.test_browser import _free_port
from tests.interp.test_edges import make_transcoders

CIRCUIT_TRACER = "circuit-tracer==0.5.0"


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


def test_circuit_tracer_server_lists_and_serves_the_exported_graph(ct_python, exported, tmp_path):
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
        slug = data["metadata"]["slug"]
        with urllib.request.urlopen(f"{url}/data/graph-metadata.json", timeout=10) as r:
            assert slug in [g["slug"] for g in json.load(r)["graphs"]]
        with urllib.request.urlopen(f"{url}/data/{slug}.json", timeout=10) as r:
            served = json.load(r)
        assert len(served["nodes"]) == len(data["nodes"]) and served["metadata"] == data["metadata"]
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
