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

from interp.attribution import (
    LogitTarget,
    PromptCache,
    ablation_effects,
    attribute,
    decompose,
    effect_correlation,
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
    n_paths: int = 16,
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
    token_strs = tok.convert_ids_to_tokens(tokens.tolist())
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
    paths = graph.top_paths(n_top)
    features: list[tuple[int, int]] = []
    for attr, path in paths:
        lines.append(
            f"| {attr:+.3f} | " + " ← ".join(graph.nodes[n].label.replace("|", "\\|") for n in path) + " |"
        )
        for n in path:
            node = graph.nodes[n]
            if node.kind == "feature" and (node.layer, node.feature) not in features:
                features.append((node.layer, node.feature))
    strongest = sorted(
        (n for n in graph.nodes.values() if n.kind in ("error", "embed", "attn")),
        key=lambda n: -abs(n.influence),
    )[:5]
    lines += [
        "",
        "Strongest non-feature nodes: " + "; ".join(f"{n.label} ({n.influence:+.3f})" for n in strongest),
    ]
    lines += ["", "## Features on the top paths", ""]
    for layer, feature in features:
        tid = ids[layer]
        label, density = _label(tid, feature)
        node = next(
            n
            for n in graph.nodes.values()
            if n.kind == "feature" and (n.layer, n.feature) == (layer, feature)
        )
        dens = f", density {density:.4f}" if density is not None else ""
        lines += [
            f"### L{layer} #{feature} — {label}",
            "",
            f"`{tid}`{dens}; influence {node.influence:+.3f}",
            "",
        ]
        lines += [f"- {e}" for e in _examples(tid, feature, 3)] or ["- (no stored examples)"]
        lines.append("")
    # 5. faithfulness of the target's direct feature attributions
    root = graph.nodes["target"]
    d = decompose(PromptCache(model, tokens, tcs), root.stage, root.position, root.reader)
    if len(d.feat_w):
        ablations = [(int(layer), root.position, int(i)) for layer, i in zip(d.feat_layer, d.feat_index)]
        frozen = ablation_effects(model, tokens, tcs, target, ablations, freeze=("pattern", "scale", "mlp"))
        live = ablation_effects(model, tokens, tcs, target, ablations, freeze=("pattern", "scale"))
        predicted = (-d.feat_w).tolist()
        lines += [
            "## Attribution vs ablation",
            "",
            f"{len(ablations)} active features at the target position, each zero-ablated in the real model: "
            f"correlation of the attribution with the measured change {effect_correlation(predicted, frozen.tolist()):.4f} "
            f"with attention patterns, norm scales and error terms frozen (the graph's linear model), "
            f"{effect_correlation(predicted, live.tolist()):.4f} with every downstream MLP live.",
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
    parser.add_argument("--n-paths", type=int, default=16)
    parser.add_argument("--n-steps", type=int, default=3)
    args = parser.parse_args(argv)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    text, path = run(args.model, layers, args.prompt, args.target, args.n_paths, args.n_steps)
    print(text)
    print(f"(written to {path})")


if __name__ == "__main__":
    main()
