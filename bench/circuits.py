"""Circuits: feature_edges throughput against this machine's matmul rate, its working memory at two d_sae sizes,
and seconds per attribution graph on the real model, all measured in the same run.

  matmul FLOP/s        the score GEMM of one block, [block, d_model] @ [d_model, block], timed bare
  feature_edges        useful FLOPs (2 d_sae_src d_sae_dst r per via, r = d_model for 'resid', d_head per head)
                       per second, as a fraction of the bare matmul rate (the rest: the running top-k, factors)
  peak memory          extra resident memory while computing edges (sampled every 2 ms, block 1024, a fresh process
                       per size) at d_sae and 4 x d_sae, next to the output size and one dense d_sae² float32 matrix
  attribution graph    seconds for a 64-token prompt on the embedded SmolLM2 at full depth (a transcoder at every
                       layer: the atlas database's when present, else random sparse ones), each method (exact:
                       MAX_FEATURE_NODES rows; greedy: the paper's search) plus influence pruning at the default
                       thresholds, as a multiple of a bare forward pass (goal <= 5x), peak extra memory and scores;
                       then circuit-tracer 0.5.0's own attribute on the same transcoders, prompt, target and cap
                       (its time and peak extra memory, from .venv-ct), and greedy against exact on the three
                       behaviours and three held-out prompts: time, feature nodes kept, scores, faithfulness ladder
  faithfulness         the atlas's stored graphs: predicted vs actual change of the target when each top feature
                       node is zeroed in the real model (interp.faithfulness), against the goals

Synthetic weights with d_model 576 / 9 heads / d_head 64 (SmolLM2 shapes). ATLAS_BENCH_DSAE sets the smaller
d_sae (default 2304).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import torch

from interp.attribution import (
    EDGE_THRESHOLD,
    MAX_FEATURE_NODES,
    NODE_THRESHOLD,
    LogitTarget,
    PromptCache,
    attribute,
    attribute_exact,
    direct_effects,
)
from interp.edges import feature_edges
from interp.transcoder import Transcoder, TranscoderConfig

D_MODEL, N_HEADS, D_HEAD, N_LAYERS = 576, 9, 64, 12
D_SAE = int(os.environ.get("ATLAS_BENCH_DSAE", "2304"))
BLOCK = 2048


def _transcoders(layers: list[int], d_sae: int, d_model: int = D_MODEL, threshold: float = 2.45) -> dict:
    """Random unit-norm encoders with b_enc = -threshold: ~0.7% of features active on a unit-rms input."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for layer in layers:
        tc = Transcoder(
            TranscoderConfig(
                d_in=d_model, d_sae=d_sae, d_out=d_model, architecture="relu", skip=False, layer=layer
            )
        ).requires_grad_(False)
        tc.W_enc.normal_(generator=g).div_(tc.W_enc.norm(dim=0, keepdim=True))
        tc.W_dec.normal_(generator=g).div_(d_model**0.5)
        tc.b_enc.fill_(-threshold)
        out[layer] = tc
    return out


def _matmul_flops(repeats: int = 5) -> float:
    a, b = torch.randn(BLOCK, D_MODEL), torch.randn(D_MODEL, BLOCK)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * BLOCK * D_MODEL * BLOCK / (time.perf_counter() - t0)


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_extra(fn) -> tuple[object, int]:
    """(fn(), peak resident memory above the start while it ran, sampled every 2 ms)."""
    base, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], _rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = fn()
    done.set()
    sampler.join()
    return out, max(peak[0], _rss()) - base


def _edges(d_sae: int, heads: bool, layers=(0, 2), block: int = BLOCK) -> tuple[float, float, int]:
    """(seconds, useful FLOPs, peak extra bytes) of feature_edges over `layers` (weights allocated beforehand)."""
    tcs = _transcoders(list(layers), d_sae)
    g = torch.Generator().manual_seed(1)
    W_V = torch.randn(N_LAYERS, N_HEADS, D_MODEL, D_HEAD, generator=g) / D_MODEL**0.5
    W_O = torch.randn(N_LAYERS, N_HEADS, D_HEAD, D_MODEL, generator=g) / D_HEAD**0.5
    flops = 2 * d_sae * d_sae * D_MODEL
    if heads:
        flops += sum(
            2 * d_sae * d_sae * D_HEAD for m in range(layers[0] + 1, layers[1] + 1) for _ in range(N_HEADS)
        )

    def run() -> float:
        t0 = time.perf_counter()
        assert list(feature_edges(tcs, W_V, W_O, k=8, heads=heads, block=block))
        return time.perf_counter() - t0

    seconds, extra = _peak_extra(run)
    return seconds, flops, extra


def bench_edges() -> None:
    rate = _matmul_flops()
    print(f"   matmul [{BLOCK}x{D_MODEL}]@[{D_MODEL}x{BLOCK}] fp32: {rate / 1e9:.1f} GFLOP/s")
    for heads in (False, True):
        seconds, flops, _ = _edges(D_SAE, heads)
        what = "resid + 18 heads" if heads else "resid only"
        print(
            f"   feature_edges L0->L2 d_sae {D_SAE} ({what}): {seconds:.2f} s, {flops / seconds / 1e9:.1f} GFLOP/s "
            f"= {flops / seconds / rate:.2f} of matmul rate"
        )
    mb = 2**20
    for d_sae in (D_SAE, 4 * D_SAE):  # block 1024: both sizes are several blocks wide
        # a fresh process per size: a heap grown by an earlier run would hide the peak
        code = f"import torch, bench.circuits as b; torch.set_grad_enabled(False); print(*b._edges({d_sae}, False, block=1024))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        seconds, _, extra = (float(v) for v in out.stdout.split()[-3:])
        output = 2 * d_sae * 8 * (4 + 8 + 8)  # two vias' worth of [d_sae, k] weight + src layer + src feature
        print(
            f"   d_sae {d_sae:6d}: peak extra memory {extra / mb:7.1f} MB (output {output / mb:.1f} MB); "
            f"one dense d_sae x d_sae matrix would be {d_sae * d_sae * 4 / mb:8.1f} MB ({seconds:.1f} s)"
        )


def _atlas_transcoders(model_name: str, layers: list[int]) -> tuple[dict, str]:
    try:
        from storage import transcoders as tc_store

        listed = tc_store.list_transcoders(model_name)
        rows = [
            (r["layer"], r["transcoder_id"]) for r in listed.iter_rows(named=True) if r["layer"] in layers
        ]
        if rows:
            found = {layer: tc_store.load_transcoder(tid).requires_grad_(False) for layer, tid in rows}
            missing = [layer for layer in layers if layer not in found]
            kind = "trained" if not missing else f"trained ({len(missing)} random)"
            return found | (_transcoders(missing, 8 * D_MODEL) if missing else {}), kind
    except Exception:  # no database or no transcoders yet: random ones show the cost just as well
        pass
    return _transcoders(layers, 8 * D_MODEL), "random"


# the three default behaviours are assets.circuits.AttributionGraphsConfig's; these three no test uses
HELD_OUT = [
    ("The capital of France is", 'logit:" Paris"-" London"'),
    ("She was born in Paris, so her native language is", 'logit:" French"-" English"'),
    ("One, two, three, four,", 'logit:" five"-" six"'),
]
LADDER = ("replacement_model", "attention_norms_frozen", "attention_frozen", "nothing_frozen")


def _build(method: str, model, tokens, tcs, target, pc=None):
    """(seconds, graph) of one graph from the prompt (cached forward pass included), the asset's defaults."""
    t0 = time.perf_counter()
    pc = pc or PromptCache(model, tokens, tcs)
    kwargs = dict(cache=pc, node_threshold=NODE_THRESHOLD, edge_threshold=EDGE_THRESHOLD)
    if method == "exact":
        graph = attribute_exact(model, tokens, tcs, target, MAX_FEATURE_NODES, **kwargs)
    else:
        graph = attribute(model, tokens, tcs, target, **kwargs)
    return time.perf_counter() - t0, graph


def compare_methods(model, tcs: dict, kind: str) -> None:
    """Greedy against exact on the three behaviours and three held-out prompts: time, feature nodes kept, scores
    and the faithfulness ladder (Spearman of predicted vs actual change over the top 20 feature nodes)."""
    from assets.circuits import AttributionGraphsConfig
    from interp.attribution import parse_target
    from interp.faithfulness import TOP_NODES, agreement, intervene

    tok = model.tokenizer
    specs = [(g["prompt"], g["target"], "behaviour") for g in AttributionGraphsConfig().graphs]
    specs += [(p, t, "held out") for p, t in HELD_OUT]
    print(
        f"   greedy vs exact, {kind} transcoders; faithfulness: Spearman (sign agreement) over the top {TOP_NODES}"
    )
    print(
        "   | prompt | target | method | s | features kept | replacement | completeness | "
        + " | ".join(LADDER)
        + " |"
    )
    print("   |" + "---|" * (7 + len(LADDER)))
    for prompt, spec, _ in specs:
        tokens = torch.tensor([tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]])
        target = parse_target(spec, tok)
        pc = PromptCache(model, tokens, tcs)
        for method in ("greedy", "exact"):
            seconds, graph = _build(method, model, tokens, tcs, target, pc)
            interventions = intervene(model, graph, tcs, TOP_NODES)
            ladder = {setting: agreement(interventions, setting) for setting in LADDER}
            features = sum(node.kind == "feature" for node in graph.nodes.values())
            print(
                f"   | {prompt[:40]} | `{spec}` | {method} | {seconds:.1f} | {features} | "
                f"{graph.scores['replacement_score']:.2f} | {graph.scores['completeness_score']:.2f} | "
                + " | ".join(f"{a['spearman']:.2f} ({a['sign_agreement']:.2f})" for a in ladder.values())
                + " |"
            )


def versus_circuit_tracer(model, tcs: dict, tokens, target, exact_seconds: float, exact_extra: int) -> None:
    """circuit-tracer 0.5.0's own `attribute` on the same transcoders, prompt, target and feature cap, in its
    virtual environment (.venv-ct, `make test-deps`): its time and the memory attribute() added at its peak."""
    import json
    import tempfile
    from pathlib import Path

    from safetensors.torch import save_file

    from interp.circuit_tracer import export_transcoders

    root = Path(__file__).resolve().parents[1]
    python = root / ".venv-ct" / "bin" / "python"
    if not python.exists():
        print("   circuit-tracer: skipped (.venv-ct missing: run `make test-deps`)")
        return
    if len(tcs) != model.cfg.n_layers:
        print("   circuit-tracer: skipped (it needs a transcoder on every layer)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        export = export_transcoders(tcs, f"{tmp}/export", "smollm2-135m")
        save_file({"vector": model.W_U[:, target.token].detach().contiguous()}, f"{tmp}/vector.safetensors")
        from storage import layout

        args = [str(python), "-m", "interp.circuit_tracer", "attribute"]
        args += ["--model", os.path.join(layout.models_dir(), "smollm2-135m"), "--transcoders", export]
        args += [
            "--tokens",
            ",".join(map(str, tokens.tolist())),
            "--target-vector",
            f"{tmp}/vector.safetensors",
        ]
        args += [
            "--max-feature-nodes",
            str(MAX_FEATURE_NODES),
            "--batch-size",
            "256",
            "--out",
            f"{tmp}/ct.safetensors",
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
        proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"   circuit-tracer: failed ({proc.stderr.strip().splitlines()[-1:]})")
            return
        meta = json.loads(Path(f"{tmp}/ct.json").read_text())
    ct_seconds = meta["attribute_seconds"]
    peak, before = meta.get("peak_rss_mib_during_attribute"), meta.get("rss_mib_before_attribute")
    ct_extra = f"{peak - before:.0f} MB" if peak is not None and before is not None else "n/a"
    print(
        f"   same prompt, target and cap ({MAX_FEATURE_NODES} feature rows), this CPU: exact {exact_seconds:.1f} s "
        f"(peak extra {exact_extra / 2**20:.0f} MB) vs circuit-tracer's attribute {ct_seconds:.1f} s (peak extra "
        f"{ct_extra}) -> {ct_seconds / exact_seconds:.2f}x; scores circuit-tracer replacement "
        f"{meta['replacement_score']:.3f}, completeness {meta['completeness_score']:.3f}"
    )


def bench_graph() -> None:
    from interp.model import load_model
    from storage import layout

    models = layout.models_dir()
    if not os.path.exists(os.path.join(models, "smollm2-135m", "config.json")):
        print("   attribution graph: skipped (embedded model not converted; run `make data`)")
        return
    model = load_model("smollm2-135m", device="cpu", cache_dir=models)
    tcs, kind = _atlas_transcoders("smollm2-135m", list(range(model.cfg.n_layers)))
    text = "The President spoke to Congress about the economy, the war, and the budget. " * 8
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][:63]
    tokens = torch.tensor([model.tokenizer.bos_token_id] + ids)  # [64]
    for _ in range(2):  # the first passes through the bridge are slow (lazy initialization)
        logits = model(tokens[None])
        PromptCache(model, tokens, tcs)
    target = LogitTarget(int(logits[0, -1].argmax()))
    forward = min(_seconds(lambda: model(tokens[None])) for _ in range(5))
    print(f"   64-token prompt, {kind} transcoders at layers {sorted(tcs)}; bare forward {forward:.3f} s")
    timings = {}
    for method in ("greedy", "exact"):
        (seconds, graph), extra = _peak_extra(lambda m=method: _build(m, model, tokens, tcs, target))
        seconds = min(seconds, _build(method, model, tokens, tcs, target)[0])  # the faster of two
        timings[method] = seconds, extra
        print(
            f"   {method}: {seconds:.2f} s (faster of 2) = {seconds / forward:.1f}x a forward pass (goal <= 5x), peak "
            f"extra memory {extra / 2**20:.0f} MB; {len(graph.nodes)} nodes, {len(graph.edges)} edges after pruning; "
            + ", ".join(f"{k} {v:.3f}" for k, v in graph.scores.items())
        )
    pc = PromptCache(model, tokens, tcs)
    stage, t, reader, _ = pc.target_reader(target)
    direct = _seconds(lambda: direct_effects(pc, stage, t, reader))
    print(f"   direct effects of every feature at every position on the target: {direct:.3f} s")
    versus_circuit_tracer(model, tcs, tokens, target, *timings["exact"])
    compare_methods(model, tcs, kind)


def report_faithfulness() -> None:
    """The stored graphs' real-model faithfulness (computed by `attribution_graphs`), against the goals."""
    try:
        from storage import queries

        rows = queries.faithfulness()
    except Exception as e:  # no atlas yet
        print(f"   faithfulness: skipped (no graphs in the atlas: run `make atlas`; {type(e).__name__})")
        return
    if rows.height == 0:
        print("   faithfulness: skipped (no graphs stored)")
    for r in rows.iter_rows(named=True):
        goal = ""
        if r["setting"] == "attention_frozen":
            met = r["sign_agreement"] >= 0.9 and r["spearman"] >= 0.8
            goal = " (goal sign >= 0.9, Spearman >= 0.8: " + ("met)" if met else "missed)")
        print(
            f"   faithfulness {r['target']} {r['setting']}: {r['n_nodes']} nodes, Pearson {r['pearson']:.2f}, "
            f"Spearman {r['spearman']:.2f}, sign agreement {r['sign_agreement']:.2f}{goal}"
        )


def main() -> None:
    with torch.no_grad():
        bench_edges()
        bench_graph()
    report_faithfulness()
