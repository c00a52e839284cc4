"""Parity with circuit-tracer: our exact attribution (interp.attribution.exact) and circuit-tracer 0.5.0's own
`attribute`, run on the same model, transcoders (exported by interp.circuit_tracer), prompt and target, build the
same graph: the same active features, adjacency entries equal within float32 tolerance, replacement and
completeness scores within 1e-3. circuit-tracer runs in .venv-ct (`make test-deps`), through the interop CLI.

Differences by design, none of which reaches the compared numbers: our rows also record what each node reads from
constants (biases, BOS, positional embeddings) and from features without a row, so a node's books balance;
circuit-tracer drops both. Both zero BOS's features and error and pass attribution through skip paths there.

The check can fail: perturbing one transcoder's skip weights on our side only (after the export) breaks parity.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from interp.attribution import LogitTarget, PromptCache, exact_graph
from interp.attribution.exact import scores
from interp.circuit_tracer import export_transcoders
from interp.model import DEFAULT_MODEL, load_model
from tests.conftest import make_tiny_checkpoint
from tests.interp.test_circuit_tracer_interop import make_set, run_ct

TOKENS = [1, 20, 31, 15, 22, 9, 40, 41]  # BOS first: circuit-tracer prepends nothing
ENTRY_TOL = 1e-4  # |ours - theirs| / the row's largest |entry|; measured ≤ 3e-6 on the toys, 2e-5 on SmolLM2
SCORE_TOL = 1e-3


def circuit_tracer_graph(python: str, model_dir, export, tokens, vector, tmp_path, max_nodes=None) -> tuple:
    """circuit-tracer's (tensors, json) for the target direction `vector` at the final norm's output."""
    save_file({"vector": vector.contiguous()}, str(tmp_path / "vector.safetensors"))
    out = tmp_path / "ct.safetensors"
    args = ["-m", "interp.circuit_tracer", "attribute", "--model", model_dir, "--transcoders", export]
    args += ["--tokens", ",".join(map(str, tokens)), "--target-vector", str(tmp_path / "vector.safetensors")]
    args += ["--batch-size", "256", "--out", str(out)]
    if max_nodes is not None:
        args += ["--max-feature-nodes", str(max_nodes)]
    run_ct(python, *args, timeout=600)
    return load_file(str(out)), json.loads(out.with_suffix(".json").read_text())


def compare(ours, theirs: dict, meta: dict) -> dict[str, float]:
    """Worst differences between our dense graph and circuit-tracer's (same node order: features, errors,
    tokens, target)."""
    active = theirs["active_features"][theirs["selected_features"]]
    assert torch.equal(ours.features, active), "different active features"
    a, b = ours.adjacency, theirs["adjacency_matrix"]
    assert a.shape == b.shape
    rows = ours.row_nodes()
    scale = a[rows].abs().amax(1, keepdim=True).clamp(min=1e-12)
    ours_scores = scores(ours)
    return {
        "entry": float(((a[rows] - b[rows]).abs() / scale).max()),
        "replacement": abs(ours_scores["replacement_score"] - meta["replacement_score"]),
        "completeness": abs(ours_scores["completeness_score"] - meta["completeness_score"]),
    }


def assert_parity(diff: dict[str, float]) -> None:
    print(
        f"parity: worst entry / row scale {diff['entry']:.1e}, replacement {diff['replacement']:.1e}, "
        f"completeness {diff['completeness']:.1e}"
    )  # the measured figures: `pytest -s` shows them
    assert diff["entry"] <= ENTRY_TOL, diff
    assert diff["replacement"] <= SCORE_TOL and diff["completeness"] <= SCORE_TOL, diff


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_exact_graph_equals_circuit_tracers_on_toy_models(ct_python, arch, tmp_path):
    model_dir = make_tiny_checkpoint(str(tmp_path / arch), arch=arch)
    model = load_model(model_dir, device="cpu")
    architecture = "topk" if arch == "llama" else "relu"
    tcs = make_set(model.cfg.n_layers, model.cfg.d_model, architecture)
    export = export_transcoders(tcs, str(tmp_path / "export"), arch)
    target = LogitTarget(25, 30)
    vector = (model.W_U[:, 25] - model.W_U[:, 30]).detach()
    full, full_meta = circuit_tracer_graph(ct_python, model_dir, export, TOKENS, vector, tmp_path)
    pc = PromptCache(model, torch.tensor(TOKENS), tcs)
    ours = exact_graph(pc, target, max_feature_nodes=None)
    assert full_meta["target_value"] == pytest.approx(
        float(ours.values[-1]) - float(model.b_U[25] - model.b_U[30]), abs=1e-4
    )
    assert_parity(compare(ours, full, full_meta))
    # capped: both rank features by the influence estimated from the rows so far, in rounds of 4 batches
    theirs, meta = circuit_tracer_graph(ct_python, model_dir, export, TOKENS, vector, tmp_path, max_nodes=40)
    ours = exact_graph(pc, target, max_feature_nodes=40)
    assert_parity(compare(ours, theirs, meta))
    if architecture == "topk":  # one skip path perturbed on our side only: parity breaks
        tcs[1].W_skip.data[:, 0] += 0.5
        broken = exact_graph(PromptCache(model, torch.tensor(TOKENS), tcs), target, max_feature_nodes=None)
        assert compare(broken, full, full_meta)["entry"] > 100 * ENTRY_TOL


@pytest.mark.slow
def test_exact_graph_equals_circuit_tracers_on_smollm2(ct_python, real_data, tmp_path):
    """The embedded SmolLM2-135M at full depth (30 layers, seeded TopK transcoders with skip: the atlas's
    architecture), a real prompt, every active feature given a row."""
    model_dir = f"{real_data['models']}/{DEFAULT_MODEL}"
    model = load_model(model_dir, device="cpu")
    tok = model.tokenizer
    tokens = [
        tok.bos_token_id,
        *tok("Mr. Smith went to Washington. Mr.", add_special_tokens=False)["input_ids"],
    ]
    tcs = make_set(model.cfg.n_layers, model.cfg.d_model, "topk")
    export = export_transcoders(tcs, str(tmp_path / "export"), DEFAULT_MODEL)
    smith = tok(" Smith", add_special_tokens=False)["input_ids"][0]
    vector = model.W_U[:, smith].detach()
    theirs, meta = circuit_tracer_graph(ct_python, model_dir, export, tokens, vector, tmp_path)
    ours = exact_graph(
        PromptCache(model, torch.tensor(tokens), tcs), LogitTarget(smith), max_feature_nodes=None
    )
    assert_parity(compare(ours, theirs, meta))
