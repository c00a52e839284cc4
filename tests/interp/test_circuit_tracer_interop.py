"""interp.circuit_tracer: our transcoders and models inside circuit-tracer 0.5.0.

circuit-tracer needs transformers <= 4.57.3, so it runs in its own venv (.venv-ct, `make test-deps`), driven here
through subprocesses; our side runs in this process. Nothing is installed or downloaded: the subprocesses get
HF_HUB_OFFLINE=1 and read only local folders. The tests check, on tiny random Llama and GPT-2 checkpoints with
seeded random transcoders on every layer (TopK with skip on Llama, ReLU without skip on GPT-2), that
  * circuit-tracer's model computes the same MLP inputs, MLP outputs and logits as `interp.model.load_model`'s,
    and the same logits as transformers' own model (up to the centring of the unembedding);
  * circuit-tracer's transcoders (loaded from our export) give our active features, activations and
    reconstructions on the same MLP inputs, within 1e-5;
  * the check fails on broken exports (b_pre not folded, W_skip transposed), and bad exports fail with errors
    that say what is wrong;
  * the CLI runs circuit-tracer's `attribute` end to end and writes a graph of the documented shape.

Measured (float32, CPU): tiny models: MLP inputs within 4e-6 of ours, logits within 1e-6, transcoder outputs on
the same inputs within 3e-6; SmolLM2-135M (slow test): logits within ~5e-5 of ours and of transformers'.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from interp.circuit_tracer import InteropError, export_transcoders
from interp.model import load_model, mlp_hooks
from interp.transcoder import Transcoder, TranscoderConfig
from tests.conftest import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TOKENS = [1, 20, 31, 15, 22, 9, 40, 41]  # starts with BOS, so circuit-tracer prepends nothing
TOL = 1e-5


def run_ct(
    ct_python: str, *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`args` run by .venv-ct's Python in the repository root, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [ct_python, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[:3]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def make_set(n_layers: int, d: int, architecture: str, seed: int = 0) -> dict[int, Transcoder]:
    """Random transcoders on every layer, with every term nonzero (b_pre, biases, skip) so each is checked; TopK's
    encoder bias is shifted down so that some tokens have negative pre-activations among their top k (where our
    activation and circuit-tracer's own TopK differ)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(n_layers):
        hook_in, hook_out = mlp_hooks(layer)
        cfg = TranscoderConfig(
            d_in=d,
            d_sae=4 * d,
            d_out=d,
            architecture=architecture,
            k=8 if architecture == "topk" else None,
            skip=architecture == "topk",
            hook_name=hook_in,
            hook_name_out=hook_out,
            layer=layer,
        )
        tc = Transcoder(cfg)
        tc.reset_parameters(g)
        with torch.no_grad():
            tc.b_enc.normal_(-1.5 if architecture == "topk" else 0.0, 0.1, generator=g)
            tc.b_dec.normal_(0, 0.1, generator=g)
            tc.b_pre.normal_(0, 0.3, generator=g)
            if tc.W_skip is not None:
                tc.W_skip.normal_(0, 0.1, generator=g)
        out[layer] = tc
    return out


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory) -> str:
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny_gpt2")), arch="gpt2")


@pytest.fixture(scope="module")
def tiny_dirs(tiny_model_dir, tiny_gpt2_dir) -> dict[str, str]:
    return {"llama": tiny_model_dir, "gpt2": tiny_gpt2_dir}


def our_run(model, tokens: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    names = [h for layer in range(model.cfg.n_layers) for h in mlp_hooks(layer)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.tensor([tokens]), names_filter=names)
    return logits[0], {k: v[0] for k, v in cache.items()}


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("arch,architecture", [("llama", "topk"), ("gpt2", "relu")])
def test_circuit_tracer_model_and_transcoders_match_ours(ct_python, tiny_dirs, tmp_path, arch, architecture):
    model_dir = tiny_dirs[arch]
    ours = load_model(model_dir, device="cpu")
    tcs = make_set(ours.cfg.n_layers, ours.cfg.d_model, architecture)
    export = export_transcoders(tcs, tmp_path / "export", model_name=f"tiny-{arch}")
    layer0 = load_file(os.path.join(export, "layer_0.safetensors"))
    d, d_sae = ours.cfg.d_model, 4 * ours.cfg.d_model
    assert layer0["W_enc"].shape == (d_sae, d) and layer0["W_dec"].shape == (d_sae, d)
    assert ("W_skip" in layer0) == (architecture == "topk")

    out = tmp_path / "ct.safetensors"
    args = ["--model", model_dir, "--transcoders", export, "--tokens", ",".join(map(str, TOKENS))]
    run_ct(ct_python, "-m", "interp.circuit_tracer", "activations", *args, "--out", str(out))
    ct = load_file(str(out))

    logits, cache = our_run(ours, TOKENS)
    assert maxdiff(ct["logits"], logits) < TOL  # measured <= 6e-7
    hf = ct["hf_logits"]  # transformers' own; ours and circuit-tracer's have a centred unembedding
    assert maxdiff(ct["logits"], hf - hf.mean(-1, keepdim=True)) < TOL
    for layer, tc in tcs.items():
        hook_in, hook_out = mlp_hooks(layer)
        assert maxdiff(ct[f"mlp_in.{layer}"], cache[hook_in]) < TOL  # measured <= 4e-6
        assert maxdiff(ct[f"mlp_out.{layer}"], cache[hook_out]) < TOL
        x = ct[f"mlp_in.{layer}"]  # the same MLP inputs on both sides
        with torch.no_grad():
            z = tc.encode(x)
            y = tc.decode(z, x)
        assert torch.equal(ct[f"acts.{layer}"] > 0, z > 0), f"layer {layer}: active features differ"
        assert maxdiff(ct[f"acts.{layer}"], z) < TOL  # measured <= 3e-6
        assert maxdiff(ct[f"recon.{layer}"], y) < TOL
        if architecture == "topk":
            fewer_than_k = ((z > 0).sum(-1) < tc.cfg.k).any()
            assert ((z > 0).sum(-1) <= tc.cfg.k).all() and fewer_than_k


LOAD_AND_APPLY = textwrap.dedent(
    """
    import json, sys, torch
    from safetensors.torch import load_file, save_file
    from interp.circuit_tracer import InteropError, ReluTopK, load_replacement_model, load_transcoder_set
    x = load_file(sys.argv[1])["x"]
    out, info = {}, {}
    for name in sys.argv[3].split(","):
        ts = load_transcoder_set(f"{sys.argv[2]}/{name}")
        info[name] = type(ts[0].activation_function).__name__ if name != "relu" else (
            "F.relu" if ts[0].activation_function is torch.nn.functional.relu else "other")
        for layer in range(len(ts)):
            acts = ts[layer].encode(x)
            out[f"{name}.acts.{layer}"] = acts
            out[f"{name}.recon.{layer}"] = ts[layer].decode(acts, x)
    save_file({k: v.detach().contiguous() for k, v in out.items()}, sys.argv[4])
    errors = {}
    for name in ("missing_layer", "not_an_export"):
        try:
            load_transcoder_set(f"{sys.argv[2]}/{name}")
        except InteropError as e:
            errors[name] = str(e)
    try:
        load_replacement_model(sys.argv[5], load_transcoder_set(f"{sys.argv[2]}/narrow"))
    except InteropError as e:
        errors["narrow"] = str(e)
    print(json.dumps({"activation": info, "errors": errors}))
    """
)


def test_broken_exports_fail_the_check_and_bad_ones_fail_clearly(ct_python, tiny_model_dir, tmp_path):
    d, n_layers = 32, 3
    topk, relu = make_set(n_layers, d, "topk", seed=1), make_set(n_layers, d, "relu", seed=2)
    root = tmp_path / "exports"
    export_transcoders(topk, root / "topk", "tiny")
    export_transcoders(relu, root / "relu", "tiny")
    for broken in ("unfolded", "skip_transposed"):  # the two mistakes an export could make, made on purpose
        shutil.copytree(root / "topk", root / broken)
        for layer, tc in topk.items():
            path = str(root / broken / f"layer_{layer}.safetensors")
            sd = load_file(path)
            if broken == "unfolded":
                sd["b_enc"] = tc.b_enc.detach().clone()  # b_pre left out
            else:
                sd["W_skip"] = sd["W_skip"].T.contiguous()
            save_file(sd, path)
    shutil.copytree(root / "relu", root / "missing_layer")
    os.remove(root / "missing_layer" / "layer_1.safetensors")
    (root / "not_an_export").mkdir()
    export_transcoders(
        make_set(n_layers, 16, "relu"), root / "narrow", "tiny"
    )  # d_model 16, the model has 32

    x = torch.randn(20, d, generator=torch.Generator().manual_seed(5))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    names = ["topk", "relu", "unfolded", "skip_transposed"]
    out = tmp_path / "out.safetensors"
    proc = run_ct(
        ct_python, "-c", LOAD_AND_APPLY, str(tmp_path / "x.safetensors"), str(root), ",".join(names), str(out),
        tiny_model_dir,
    )  # fmt: skip
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["activation"] == {"topk": "ReluTopK", "relu": "F.relu", "unfolded": "ReluTopK",
                                    "skip_transposed": "ReluTopK"}  # fmt: skip
    ct = load_file(str(out))

    def worst(name: str, tcs: dict[int, Transcoder]) -> float:
        diffs = []
        for layer, tc in tcs.items():
            with torch.no_grad():
                z = tc.encode(x)
                diffs += [
                    maxdiff(ct[f"{name}.acts.{layer}"], z),
                    maxdiff(ct[f"{name}.recon.{layer}"], tc.decode(z, x)),
                ]
        return max(diffs)

    assert worst("topk", topk) < TOL and worst("relu", relu) < TOL
    assert worst("unfolded", topk) > 100 * TOL
    assert worst("skip_transposed", topk) > 100 * TOL

    errors = report["errors"]
    assert "layer_1.safetensors" in errors["missing_layer"] and "every layer" in errors["missing_layer"]
    assert "config.yaml is missing" in errors["not_an_export"]
    assert "d_model=16" in errors["narrow"] and "d_model=32" in errors["narrow"]


def test_export_refuses_what_circuit_tracer_cannot_load_and_writes_atomically(tmp_path):
    tcs = make_set(3, 8, "relu")
    with pytest.raises(InteropError, match=r"leave out layer\(s\) \[1\]"):
        export_transcoders({0: tcs[0], 2: tcs[2]}, tmp_path / "gap", "m")
    odd = Transcoder(TranscoderConfig(d_in=8, d_sae=32, d_out=16, architecture="relu", k=None, skip=False))
    with pytest.raises(InteropError, match="d_in=8 to d_out=16"):
        export_transcoders({0: odd}, tmp_path / "odd", "m")
    with pytest.raises(InteropError, match="architecture='topk'"):
        export_transcoders({**tcs, 1: make_set(2, 8, "topk")[1]}, tmp_path / "mixed", "m")

    path = export_transcoders(tcs, tmp_path / "export", "m")
    before = sorted(os.listdir(path))
    with torch.no_grad():
        tcs[2].W_dec[0, 0] = float("nan")
    with pytest.raises(InteropError, match="NaN"):
        export_transcoders(tcs, path, "m")
    assert sorted(os.listdir(path)) == before and sorted(os.listdir(tmp_path)) == ["export"]


def test_cli_attribute_runs_end_to_end(ct_python, tiny_model_dir, tiny_model, tmp_path):
    tcs = make_set(tiny_model.cfg.n_layers, tiny_model.cfg.d_model, "topk", seed=3)
    export = export_transcoders(tcs, tmp_path / "export", "tiny")
    vec = torch.randn(tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(7))
    save_file({"vector": vec}, str(tmp_path / "target.safetensors"))
    out = tmp_path / "graph.safetensors"
    proc = run_ct(
        ct_python, "-m", "interp.circuit_tracer", "attribute", "--model", tiny_model_dir, "--transcoders", export,
        "--tokens", ",".join(map(str, TOKENS)), "--target-vector", str(tmp_path / "target.safetensors"),
        "--max-feature-nodes", "20", "--batch-size", "8", "--out", str(out), "--check-logits",
    )  # fmt: skip
    meta = json.loads(proc.stdout.strip().splitlines()[-1])
    assert meta == json.loads(out.with_suffix(".json").read_text())
    g = load_file(str(out))
    n_layers, n_pos = tiny_model.cfg.n_layers, len(TOKENS)
    assert (meta["n_layers"], meta["n_pos"]) == (n_layers, n_pos)
    n, m = g["active_features"].shape[0], g["selected_features"].shape[0]
    assert g["active_features"].shape == (n, 3) and g["activation_values"].shape == (n,) and m == 20 <= n
    assert g["active_features"].dtype == torch.int64
    assert (g["active_features"][:, 1] > 0).all()  # circuit-tracer zeroes every feature at position 0 (BOS)
    assert g["active_features"][:, 0].max() < n_layers and (g["activation_values"] > 0).all()
    assert g["selected_features"].unique().numel() == m and g["selected_features"].max() < n
    N = m + n_layers * n_pos + n_pos + 1
    assert g["adjacency_matrix"].shape == (N, N) and g["adjacency_matrix"].dtype == torch.float32
    assert torch.isfinite(g["adjacency_matrix"]).all() and g["adjacency_matrix"][-1].abs().sum() > 0
    assert g["input_tokens"].tolist() == TOKENS
    assert torch.equal(g["logit_vector"], vec)  # a CustomTarget's vector is used as given, not demeaned
    assert 0 <= meta["replacement_score"] <= 1 and 0 <= meta["completeness_score"] <= 1
    assert meta["logits_check"]["max_abs_diff_centred"] < TOL
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(
            torch.tensor([TOKENS]), names_filter=["ln_final.hook_normalized"]
        )
    ours = float(cache["ln_final.hook_normalized"][0, -1] @ vec)
    assert meta["target_value"] == pytest.approx(ours, abs=1e-4)
    assert meta["attribute_seconds"] > 0 and meta["peak_rss_mib"] >= meta["peak_rss_mib_before_attribute"]
    during = meta["peak_rss_mib_during_attribute"]  # null where /proc/self/clear_refs cannot be written
    assert during is None or during >= meta["rss_mib_before_attribute"] > 0
    assert meta["circuit_tracer_version"] == "0.5.0"


def test_cli_refuses_bad_input_clearly(ct_python, tiny_model_dir, tmp_path):
    export = export_transcoders(make_set(3, 32, "relu"), tmp_path / "export", "tiny")
    save_file({"vector": torch.zeros(16)}, str(tmp_path / "short.safetensors"))
    proc = run_ct(
        ct_python, "-m", "interp.circuit_tracer", "attribute", "--model", tiny_model_dir, "--transcoders", export,
        "--tokens", "1,2,3", "--target-vector", str(tmp_path / "short.safetensors"), "--out", str(tmp_path / "g"),
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "shape (16,)" in proc.stderr and "(32,)" in proc.stderr
    assert not (tmp_path / "g").exists()


@pytest.mark.slow
def test_smollm2_logits_in_circuit_tracer_match_ours(ct_python, real_data, tmp_path):
    """The real embedded model: rope_theta (100,000, given only as rope_parameters) must be read right. Both
    sides load at once, one per core."""
    model_dir = os.path.join(real_data["models"], "smollm2-135m")
    tokens = [1, 504, 2365, 5248, 253, 3385, 30, 614, 284, 3165]
    out = tmp_path / "ct.safetensors"
    args = ["--model", model_dir, "--tokens", ",".join(map(str, tokens)), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [ct_python, "-m", "interp.circuit_tracer", "activations", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        logits, cache = our_run(load_model(model_dir, device="cpu"), tokens)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-4000:]
    ct = load_file(str(out))
    assert maxdiff(ct["logits"], logits) < 2e-4  # measured 4.5e-5
    hf = ct["hf_logits"]
    assert maxdiff(ct["logits"], hf - hf.mean(-1, keepdim=True)) < 2e-4  # measured 4.5e-5
    worst_in = max(maxdiff(ct[f"mlp_in.{layer}"], cache[mlp_hooks(layer)[0]]) for layer in range(30))
    print(f"SmolLM2: logits {maxdiff(ct['logits'], logits):.1e}, MLP inputs {worst_in:.1e}")
    assert worst_in < 1e-3
