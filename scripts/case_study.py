"""Worked case study: trace a behaviour the embedded model does well through the atlas's transcoders.

    .venv/bin/python -m scripts.case_study            # indirect object identification on SmolLM2 (default)
    .venv/bin/python -m scripts.case_study --prompt "In 1999, ... In 200" --target 'logit:"1"-"0"'

Needs an atlas with transcoders (`make atlas`, or at least the `transcoders` asset); feature labels and examples
appear when `features` is materialized too.

Steps:
  1. Load the model and the latest transcoder of every atlas layer: model and device as the assets' `atlas_model`
     resource resolves them (ATLAS_MODEL, ATLAS_DEVICE), layers as the build parses them (ATLAS_LAYERS).
  2. Check the behaviour: the model's probabilities of the target token and the distractor.
  3. Build the target's attribution graph (greedy path search), store it in the atlas and export circuit-tracer
     JSON; list its top paths, and for each feature on them its label, density and top activating examples.
  4. Split the target's value into exact direct effects (features, errors, MLPs without a transcoder, embeddings,
     biases) and list the strongest direct features, each checked by a real ablation.
  5. Trace the strongest feature of the highest transcoder layer below the target the same way.
  6. Check each traced node's strongest direct effects against real ablations (attention patterns, norm scales
     and error terms frozen; and with only the patterns frozen).
  7. Write the report to $ATLAS_HOME/exports/case-study-<graph id>.md and print it.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass

import torch

from assets import settings
from assets.resources import AtlasModel
from interp.ablation import ablation_effects
from interp.attribution import (
    N_PATHS,
    N_STEPS,
    FeatureTarget,
    LogitTarget,
    PromptCache,
    attribute,
    direct_effects,
    parse_target,
    target_string,
)
from interp.faithfulness import SETTINGS, agreement, intervene, pearson
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


@dataclass
class _Study:
    """One prompt with the atlas's transcoders: everything the report's sections share."""

    model: object
    model_name: str
    prompt: str
    tokens: torch.Tensor  # [pos], BOS first
    token_strs: list[str]
    ids: dict[int, str]  # layer -> transcoder id
    tcs: dict  # layer -> Transcoder
    target: object  # the report's Target
    pc: PromptCache


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "⏎")


def _trace(
    st: _Study, target, heading: str, n_paths: int, n_steps: int, n_top: int
) -> tuple[list[str], object, str]:
    """Build, store and export one graph; its top paths and its features (label, density, top examples)."""
    tokens, ids, token_strs = st.tokens, st.ids, st.token_strs
    tok = st.model.tokenizer
    canonical = target_string(target, len(tokens), ids.get(getattr(target, "layer", None)), tok)
    graph = attribute(
        st.model, tokens, st.tcs, target, n_paths=n_paths, n_steps=n_steps, token_strs=token_strs, cache=st.pc,
        tokenizer=tok,
    )  # fmt: skip
    interventions = intervene(st.model, graph, st.tcs)
    gid = circuits.write_graph(graph, st.model_name, st.prompt, canonical, ids, interventions)
    json_path = graph_export.export_graph(gid, token_strs=token_strs)
    kinds: dict[str, int] = {}
    for node in graph.nodes.values():
        kinds[node.kind] = kinds.get(node.kind, 0) + 1
    lines = [
        f"## {heading}",
        "",
        f"Target `{canonical}` = {graph.target_value:.3f}. Graph `{gid}` ({n_paths} paths per step, {n_steps} steps): "
        + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
        + f", {len(graph.edges)} edges. Circuit-tracer JSON: `{json_path}`.",
        "",
        "### Top paths",
        "",
        "| attribution | path (target ← … ← source) |",
        "|---:|---|",
    ]
    paths = graph.top_paths(4 * n_top)
    via_features = [p for p in paths if any(graph.nodes[n].kind == "feature" for n in p[1])]
    for attr, path in paths[:n_top] + [p for p in via_features[:n_top] if p not in paths[:n_top]]:
        lines.append(f"| {attr:+.3f} | " + " ← ".join(_md(graph.nodes[n].label) for n in path) + " |")
    lines += ["", *_real_model_table(interventions)]
    ranked = sorted((n for n in graph.nodes.values() if n.kind == "feature"), key=lambda n: -abs(n.influence))
    strongest = sorted(
        (n for n in graph.nodes.values() if n.kind in ("error", "embed", "attn", "skip")),
        key=lambda n: -abs(n.influence),
    )[:5]
    lines += [
        "",
        "Strongest non-feature nodes: "
        + "; ".join(f"{_md(n.label)} ({n.influence:+.3f})" for n in strongest),
        "",
        "### Features by influence on the target",
        "",
    ]
    if not ranked:
        lines += ["No transcoder feature is on the kept paths (see the direct effects below).", ""]
    for layer, feature in list(dict.fromkeys((n.layer, n.feature) for n in ranked))[:n_top]:
        tid = ids[layer]
        label, density = _label(tid, feature)
        node = next(n for n in ranked if (n.layer, n.feature) == (layer, feature))
        dens = f", density {density:.4f}" if density is not None else ""
        lines += [
            f"#### L{layer} #{feature} — {_md(label)}",
            "",
            f"`{tid}`{dens}; influence {node.influence:+.3f}",
            "",
        ]
        lines += [f"- {e}" for e in _examples(tid, feature, 3)] or ["- (no stored examples)"]
        lines.append("")
    return lines, graph, gid


def _strongest_effects(effects, n: int) -> list[tuple[float, int, int, int]]:
    """(direct effect, layer, position, feature) of the n features with the largest |direct effect|."""
    flat = [
        (float(f[s, i]), layer, s, i)
        for layer, f in effects.features.items()
        for s, i in f.nonzero().tolist()
    ]
    return sorted(flat, key=lambda e: -abs(e[0]))[:n]


@dataclass
class _Check:
    """A node's direct effects, and its strongest upstream features zero-ablated in the real model."""

    label: str
    effects: object  # DirectEffects
    strongest: list[tuple[float, int, int, int]]  # (direct effect, layer, position, feature), by |effect|
    frozen: list[float]  # ablated minus clean: patterns, scales and other MLP outputs frozen
    live: list[float]  # ablated minus clean: only patterns frozen


def _check(st: _Study, node, target, n_edges: int = 64) -> _Check:
    effects = direct_effects(st.pc, node.stage, node.position, node.reader)
    strongest = _strongest_effects(effects, n_edges)
    args = (st.model, st.tokens, st.tcs, target, [(layer, s, i) for _, layer, s, i in strongest])
    frozen = ablation_effects(*args, freeze=("pattern", "scale", "mlp")).tolist()
    live = ablation_effects(*args, freeze=("pattern",)).tolist()
    return _Check(node.label, effects, strongest, frozen, live)


def _direct_effects(st: _Study, check: _Check, n_top: int) -> tuple[list[str], tuple[int, int, int] | None]:
    """Where the target's value comes from, its strongest direct features (ablation-checked), and the strongest
    feature of the highest transcoder layer below it, to follow."""
    effects = check.effects
    lines = [
        "## Direct effects on the target",
        "",
        "The target's value splits exactly into direct effects (residual stream and every attention path, "
        "patterns frozen): "
        + ", ".join(f"{k.replace('_', ' ')} {v:+.3f}" for k, v in effects.budget().items())
        + f" (sum {effects.total():+.3f}; own bias excluded).",
        "",
        "| direct effect | ablation (frozen) | feature | position | label |",
        "|---:|---:|---|---|---|",
    ]
    for (e, layer, s, i), m in zip(check.strongest[:n_top], check.frozen):
        label, _ = _label(st.ids[layer], i)
        where = _md(repr(st.token_strs[s]))
        lines.append(
            f"| {e:+.3f} | {-m:+.3f} | L{layer} #{i} (`{st.ids[layer]}`) | {s} {where} | {_md(label)} |"
        )
    if not effects.features:
        return lines + [""], None
    layer = max(effects.features)
    top = effects.features[layer]  # [pos, d_sae]
    position, feature = divmod(int(top.abs().argmax()), top.shape[1])
    return lines + [""], (layer, position, feature) if top.any() else None


def _real_model_table(interventions) -> list[str]:
    """The graph's faithfulness in the replacement model and the real model (interp.faithfulness), one row per
    setting."""
    if not interventions:
        return ["No feature node to intervene on.", ""]
    lines = [
        f"### Faithfulness (top {len(interventions)} feature nodes zeroed; the replacement model, then the real "
        "model with MLPs live)",
        "",
        "| setting | Pearson | Spearman | sign agreement |",
        "|---|---:|---:|---:|",
    ]
    for setting in SETTINGS:
        a = agreement(interventions, setting)
        lines.append(f"| {setting} | {a['pearson']:.2f} | {a['spearman']:.2f} | {a['sign_agreement']:.2f} |")
    return lines + [""]


def _faithfulness(checks: list[_Check]) -> list[str]:
    """Direct effects of each node's strongest upstream features against real zero-ablations."""
    lines = [
        "## Direct effects vs ablation",
        "",
        "| node | edges | r (errors frozen) | max abs diff | r (only patterns frozen) |",
        "|---|---:|---:|---:|---:|",
    ]
    for check in checks:
        if len(check.strongest) < 3:
            continue
        predicted = [-e for e, *_ in check.strongest]
        diff = max(abs(p - m) for p, m in zip(predicted, check.frozen))
        lines.append(
            f"| {_md(check.label)} | {len(predicted)} | {pearson(predicted, check.frozen):.4f} | "
            f"{diff:.2g} | {pearson(predicted, check.live):.4f} |"
        )
    return lines + [
        "",
        "Each node's strongest upstream features (by |direct effect|, at any position) are zero-ablated in the real "
        "model. A direct effect is the residual path plus every path through attention heads with patterns frozen "
        "(`interp.attribution.direct_effects`). 'Errors frozen' also holds norm scales and every other MLP output at "
        "their clean values: the linear model the graph is defined in, where the match is exact. 'Only patterns "
        "frozen' lets downstream MLPs and norms respond.",
        "",
    ]


def run(
    atlas: AtlasModel,
    layers: list[int] | None,
    prompt: str,
    target_spec: str,
    n_paths: int = N_PATHS,
    n_steps: int = N_STEPS,
    n_top: int = 6,
) -> tuple[str, str]:
    """Build, store and describe the graphs; returns (report markdown, report path)."""
    # 1. model and transcoders
    model_name, device = atlas.model_name, atlas.torch_device
    model = atlas.load()
    ids, tcs, failed = circuits.load_atlas_transcoders(model_name, layers, device)
    tok = model.tokenizer
    tokens = torch.tensor(
        [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"], device=device
    )
    target = parse_target(target_spec, tok)
    token_strs = [tok.decode([t]) for t in tokens.tolist()]
    st = _Study(
        model, model_name, prompt, tokens, token_strs, ids, tcs, target, PromptCache(model, tokens, tcs)
    )
    # 2. the behaviour
    lines = [
        f"# Case study: {prompt!r}",
        "",
        f"Model `{model_name}`; transcoders: " + ", ".join(ids.values()),
    ]
    if failed:
        lines.append(f"(failed their quality gate: {', '.join(failed)})")
    if isinstance(target, LogitTarget):
        probs = st.pc.logits[target.position].softmax(-1)
        shown = [target.token] + ([target.other] if target.other is not None else [])
        behaviour = ", ".join(f"p({tok.decode([t])!r}) = {float(probs[t]):.3f}" for t in shown)
        lines += [
            "",
            f"Behaviour: {behaviour}; the model's top prediction is {tok.decode([int(probs.argmax())])!r}.",
        ]
    lines.append("")
    # 3. the target's graph; 4. its direct effects
    traced, graph, gid = _trace(st, target, "The target's circuit", n_paths, n_steps, n_top)
    checks = [_check(st, graph.nodes["target"], target)]
    direct, follow = _direct_effects(st, checks[0], n_top)
    lines += traced + direct
    # 5. the strongest feature of the highest transcoder layer below the target, traced in turn
    if follow is not None:
        layer, position, feature = follow
        sub_target = FeatureTarget(layer, feature, position)
        traced, sub, _ = _trace(
            st, sub_target, f"Following L{layer} #{feature} at position {position}", n_paths, n_steps, n_top
        )
        lines += traced
        checks.append(_check(st, sub.nodes["target"], sub_target))
    # 6. faithfulness
    lines += _faithfulness(checks)
    # 7. the report
    text = "\n".join(lines) + "\n"
    path = layout.join(layout.exports_dir(), f"case-study-{gid}.md")
    with layout.atomic_local_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
    return text, path


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="default: $ATLAS_MODEL, else the embedded model")
    parser.add_argument("--device", default="", help="default: $ATLAS_DEVICE, else cuda when available")
    parser.add_argument(
        "--layers",
        default=os.environ.get("ATLAS_LAYERS"),
        help="'all' or e.g. '0,2,8' (default: $ATLAS_LAYERS, else every trained layer)",
    )
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--target", default=TARGET)
    parser.add_argument("--n-paths", type=int, default=N_PATHS)
    parser.add_argument("--n-steps", type=int, default=N_STEPS)
    args = parser.parse_args(argv)
    atlas = AtlasModel(name=args.model, device=args.device)
    layers = settings.parse_layers(args.layers, atlas.model_name) if args.layers else None
    text, path = run(atlas, layers, args.prompt, args.target, args.n_paths, args.n_steps)
    print(text)
    print(f"(written to {path})")


if __name__ == "__main__":
    main()
