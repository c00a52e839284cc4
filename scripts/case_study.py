"""Worked case study: trace a behaviour the embedded model does well through the atlas's transcoders.

    .venv/bin/python -m scripts.case_study            # indirect object identification on SmolLM2 (default)
    .venv/bin/python -m scripts.case_study --prompt "In 1999, ... In 200" --target 'logit:"1"-"0"'

Needs an atlas with transcoders (`make atlas`, or at least the `transcoders` asset); feature labels and examples
appear when `features` is materialized too.

Steps:
  1. Load the model and the latest transcoder of every atlas layer (ATLAS_MODEL, ATLAS_LAYERS).
  2. Check the behaviour: the model's probabilities of the target token and the distractor.
  3. Build the attribution graph of the logit difference (greedy path search), store it in the atlas and export
     circuit-tracer JSON.
  4. List the top paths, and for each feature on them its label, density and top activating examples.
  5. Check the target's direct feature attributions against real ablations (attention patterns, norm scales and
     error terms frozen; and with every MLP live).
  6. Write the report to $ATLAS_HOME/exports/case-study-<graph id>.md and print it.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from interp.ablation import ablation_effects, effect_correlation
from interp.attribution import (
    FeatureTarget,
    LogitTarget,
    PromptCache,
    attribute,
    decompose,
    parse_target,
    target_string,
)
from interp.model import DEFAULT_MODEL, load_model
from storage import circuits, graph_export, layout, queries

log = logging.getLogger("atlas.case_study")

PROMPT = "When Mary and John went to the store, John gave a drink to"
TARGET = 'logit:" Mary"-" John"'


def _examples(transcoder_id: str, feature: int, n: int) -> list[str]:
    card = queries.feature_card(transcoder_id, feature)
    if card is None:
        return []
    out = []
    for e in [e for e in card["examples"] if e["kind"] == "top"][:n]:
        toks = list(e["tokens"])
        h = e["highlight"]
        if 0 <= h < len(toks):
            toks[h] = f"[[{toks[h]}]]"
        out.append(f"{e['activation']:.2f}: " + "".join(toks).replace("\n", "⏎").replace("|", "\\|"))
    return out


def _label(transcoder_id: str, feature: int) -> tuple[str, float | None]:
    card = queries.feature_card(transcoder_id, feature)
    if card is None:
        return "(not mined)", None
    return card["stats"].get("label") or "", card["stats"].get("density")


def run(
    model_name: str,
    layers: list[int] | None,
    prompt: str,
    target_spec: str,
    n_paths: int = 24,
    n_steps: int = 3,
    n_top: int = 6,
    models_dir: str | None = None,
) -> tuple[str, str]:
    """Build, store and describe one graph; returns (report markdown, report path)."""
    # 1. model and transcoders
    model = load_model(model_name, device="cpu", cache_dir=models_dir or layout.models_dir())
    ids, tcs, failed = circuits.load_atlas_transcoders(model_name, layers, "cpu")
    tok = model.tokenizer
    tokens = torch.tensor([tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"])
    token_strs = [tok.decode([t]) for t in tokens.tolist()]
    target = parse_target(target_spec, tok)
    # 2. the behaviour
    probs = model(tokens[None])[0, target.position].softmax(-1)
    lines = [
        f"# Case study: {prompt!r}",
        "",
        f"Model `{model_name}`; transcoders: " + ", ".join(ids.values()),
    ]
    if failed:
        lines.append(f"(failed their quality gate: {', '.join(failed)})")
    if isinstance(target, LogitTarget):
        tokens_shown = [target.token] + ([target.other] if target.other is not None else [])
        behaviour = ", ".join(f"p({tok.decode([t])!r}) = {float(probs[t]):.3f}" for t in tokens_shown)
        top = int(probs.argmax())
        lines += ["", f"Behaviour: {behaviour}; the model's top prediction is {tok.decode([top])!r}."]
    # 3. the graph
    canonical = target_string(target, len(tokens), ids.get(getattr(target, "layer", None)))
    graph = attribute(model, tokens, tcs, target, n_paths=n_paths, n_steps=n_steps, token_strs=token_strs)
    gid = circuits.write_graph(graph, model_name, prompt, canonical, ids)
    json_path = graph_export.export_graph(gid, token_strs=token_strs)
    kinds = {}
    for node in graph.nodes.values():
        kinds[node.kind] = kinds.get(node.kind, 0) + 1
    lines += [
        "",
        f"Target `{canonical}` = {graph.target_value:.3f}. Graph `{gid}` ({n_paths} paths per step, {n_steps} steps): "
        + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
        + f", {len(graph.edges)} edges. Circuit-tracer JSON: `{json_path}`.",
    ]
    # 4. top paths and their features
    lines += ["", "## Top paths", "", "| attribution | path (target ← … ← source) |", "|---:|---|"]
    paths = graph.top_paths(4 * n_top)
    via_features = [p for p in paths if any(graph.nodes[n].kind == "feature" for n in p[1])]
    for attr, path in paths[:n_top] + [p for p in via_features[:n_top] if p not in paths[:n_top]]:
        lines.append(
            f"| {attr:+.3f} | " + " ← ".join(graph.nodes[n].label.replace("|", "\\|") for n in path) + " |"
        )
    ranked = sorted((n for n in graph.nodes.values() if n.kind == "feature"), key=lambda n: -abs(n.influence))
    features = list(dict.fromkeys((n.layer, n.feature) for n in ranked))[:n_top]
    strongest = sorted(
        (n for n in graph.nodes.values() if n.kind in ("error", "embed", "attn")),
        key=lambda n: -abs(n.influence),
    )[:5]
    lines += [
        "",
        "Strongest non-feature nodes: " + "; ".join(f"{n.label} ({n.influence:+.3f})" for n in strongest),
    ]
    lines += ["", "## Features by influence on the target", ""]
    for layer, feature in features:
        tid = ids[layer]
        label, density = _label(tid, feature)
        node = next(n for n in ranked if (n.layer, n.feature) == (layer, feature))
        dens = f", density {density:.4f}" if density is not None else ""
        lines += [
            f"### L{layer} #{feature} — {label}",
            "",
            f"`{tid}`{dens}; influence {node.influence:+.3f}",
            "",
        ]
        lines += [f"- {e}" for e in _examples(tid, feature, 3)] or ["- (no stored examples)"]
        lines.append("")
    # 5. faithfulness: direct feature attributions of the target and of the strongest feature nodes vs ablations
    pc = PromptCache(model, tokens, tcs)
    lines += [
        "## Attribution vs ablation",
        "",
        "| node | edges | r (errors frozen) | r (MLPs live) |",
        "|---|---:|---:|---:|",
    ]
    lowest = min(tcs)
    for node in [graph.nodes["target"]] + [n for n in ranked if n.layer > lowest][:4]:
        d = decompose(pc, node.stage, node.position, node.reader)
        if len(d.feat_w) < 3:
            continue
        ablations = [(int(layer), node.position, int(i)) for layer, i in zip(d.feat_layer, d.feat_index)]
        dst = target if node.kind == "target" else FeatureTarget(node.layer, node.feature, node.position)
        frozen = ablation_effects(model, tokens, tcs, dst, ablations, freeze=("pattern", "scale", "mlp"))
        live = ablation_effects(model, tokens, tcs, dst, ablations, freeze=("pattern", "scale"))
        predicted = (-d.feat_w).tolist()
        r_frozen, r_live = (
            effect_correlation(predicted, frozen.tolist()),
            effect_correlation(predicted, live.tolist()),
        )
        lines.append(f"| {node.label} | {len(ablations)} | {r_frozen:.4f} | {r_live:.4f} |")
    lines += [
        "",
        "Each active upstream feature at the node's position is zero-ablated in the real model. 'Errors frozen' holds "
        "attention patterns, norm scales and every other MLP output at their clean values (the linear model the "
        "graph is defined in; the gap to 1 is the same-position attention paths, which the graph keeps as separate "
        "attention nodes); 'MLPs live' lets every downstream MLP respond.",
        "",
    ]
    # 6. the report
    text = "\n".join(lines) + "\n"
    path = layout.join(layout.exports_dir(), f"case-study-{gid}.md")
    with layout.atomic_local_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
    return text, path


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("ATLAS_MODEL", DEFAULT_MODEL))
    parser.add_argument(
        "--layers", default=os.environ.get("ATLAS_LAYERS"), help="default: every trained layer"
    )
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--target", default=TARGET)
    parser.add_argument("--n-paths", type=int, default=24)
    parser.add_argument("--n-steps", type=int, default=3)
    args = parser.parse_args(argv)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    text, path = run(args.model, layers, args.prompt, args.target, args.n_paths, args.n_steps)
    print(text)
    print(f"(written to {path})")


if __name__ == "__main__":
    main()
