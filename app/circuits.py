"""Views of a stored attribution graph: an SVG (token positions left to right, layers bottom to top) and its
top paths (interp.attribution's own path search, run on the stored rows).

Feature nodes are links to their cards; every label and tooltip is escaped. Edge width is |weight| relative to
the largest edge, blue for positive and red for negative contributions.
"""

from __future__ import annotations

from collections import defaultdict

import polars as pl

from app.components import card_url, esc, show_token
from interp.attribution import AttributionGraph, GraphNode

CELL_W, NODE_W, ROW_H, PAD, R_MAX = 130, 44, 72, 40, 14
COLORS = {
    "feature": "#f28e2b",
    "attn": "#59a14f",
    "embed": "#4e79a7",
    "target": "#b07aa1",
    "error": "#9c9c9c",
}


def node_text(n: dict) -> str:
    """Short raw label of a node (escape before rendering)."""
    if n["kind"] == "feature":
        return f"L{n['layer']}#{n['feature']}"
    if n["kind"] == "attn":
        return f"L{n['layer']}H{n['feature']}"
    if n["kind"] == "embed":
        return show_token(n["token_str"] if n["token_str"] is not None else str(n["feature"]))
    if n["kind"] == "target":
        return n["label"] or "target"
    return {"error": "err"}.get(
        n["kind"], n["kind"]
    )  # error, bias, skip, pruned: the tooltip has the details


def _rows(nodes: list[dict]) -> dict[str, int]:
    """Row of each node: 0 = embeddings, 1 + layer for layered nodes, top row = target."""
    top = 2 + max((n["layer"] for n in nodes if n["layer"] is not None), default=0)
    out = {}
    for n in nodes:
        if n["kind"] == "target":
            out[n["node_id"]] = top
        elif n["kind"] == "embed" or n["layer"] is None:
            out[n["node_id"]] = 0
        else:
            out[n["node_id"]] = 1 + n["layer"]
    return out


def top_paths(nodes: pl.DataFrame, edges: pl.DataFrame, n: int) -> list[tuple[float, list[str]]]:
    """The n strongest chains (source first, target last) with their path attribution to the target."""
    graph = AttributionGraph(
        tokens=[],
        target=None,
        target_value=0.0,
        nodes={
            r["node_id"]: GraphNode(
                r["node_id"],
                r["kind"],
                r["layer"],
                r["position"],
                r["feature"],
                r["activation"],
                r["influence"] or 0.0,
            )
            for r in nodes.iter_rows(named=True)
        },
        edges={(src, dst): w for src, dst, w in edges.iter_rows()},
        config={},
    )
    return [(attr, path[::-1]) for attr, path in graph.top_paths(n)]


def graph_svg(nodes: pl.DataFrame, edges: pl.DataFrame, token_strs: list[str]) -> str:
    rows = nodes.to_dicts()
    row_of = _rows(rows)
    n_rows = max(row_of.values(), default=0) + 1
    pos = {n["node_id"]: n["position"] for n in rows}
    for src, dst, _ in edges.iter_rows():  # unpositioned nodes (pruned remainders) sit under what they feed
        if pos.get(src) is None and pos.get(dst) is not None:
            pos[src] = pos[dst]
    pos = {k: v or 0 for k, v in pos.items()}
    column = {p: i for i, p in enumerate(sorted(set(pos.values())))}  # positions with nodes only
    cells: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for n in rows:
        cells[(row_of[n["node_id"]], column[pos[n["node_id"]]])].append(n)
    col_w = [CELL_W] * len(column)  # a column widens with its most crowded cell
    for (_, c), members in cells.items():
        col_w[c] = max(col_w[c], NODE_W * len(members))
    col_x = [2 * PAD + sum(col_w[:c]) for c in range(len(column))]
    xy = {}
    for (r, c), members in cells.items():
        for i, n in enumerate(members):
            xy[n["node_id"]] = (
                col_x[c] + (i + 1) * col_w[c] / (len(members) + 1),
                PAD + (n_rows - 1 - r) * ROW_H,
            )
    width, height = 3 * PAD + sum(col_w), 2 * PAD + (n_rows - 1) * ROW_H
    infl = max((abs(n["influence"] or 0.0) for n in rows), default=0.0) or 1.0
    wmax = max((abs(w) for w in edges["weight"]), default=0.0) or 1.0

    parts = [
        f'<svg class="atlas-graph" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'style="width:100%;max-width:{width}px">'
    ]
    for r in range(n_rows):  # row names at the left, token positions at the bottom
        name = "emb" if r == 0 else "out" if r == n_rows - 1 else f"L{r - 1}"
        y = PAD + (n_rows - 1 - r) * ROW_H + 4
        parts.append(f'<text x="4" y="{y:.0f}" font-size="11" fill="grey">{name}</text>')
    for p, c in column.items():
        x = col_x[c] + col_w[c] / 2
        name = esc(show_token(token_strs[p])) if 0 <= p < len(token_strs) else f"pos {p}"
        parts.append(
            f'<text x="{x:.0f}" y="{height - 4}" font-size="10" fill="grey" text-anchor="middle">{name}</text>'
        )
    for src, dst, w in edges.iter_rows():
        if src in xy and dst in xy:
            (x1, y1), (x2, y2) = xy[src], xy[dst]
            color = "#3b6fb6" if w >= 0 else "#d1495b"
            parts.append(
                f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{color}" '
                f'stroke-opacity="0.6" stroke-width="{0.5 + 4 * abs(w) / wmax:.2f}"><title>{w:+.4f}</title></line>'
            )
    for n in rows:
        x, y = xy[n["node_id"]]
        r = 5 + (R_MAX - 5) * abs(n["influence"] or 0.0) / infl
        tip = f"{n['label'] or node_text(n)} {n.get('feature_label') or ''} | act {n['activation'] or 0:.3f} | influence {n['influence'] or 0:.3f}"
        shape = (
            f'<circle cx="{x:.0f}" cy="{y:.0f}" r="{r:.1f}" fill="{COLORS.get(n["kind"], "#bab0ac")}">'
            f"<title>{esc(tip)}</title></circle>"
            f'<text x="{x:.0f}" y="{y + R_MAX + 10:.0f}" font-size="11" text-anchor="middle">{esc(node_text(n))}</text>'
        )
        if n["kind"] == "feature" and n["transcoder_id"]:
            shape = f'<a class="atlas-node" href="{esc(card_url(n["transcoder_id"], n["feature"]))}" target="_self">{shape}</a>'
        parts.append(shape)
    parts.append("</svg>")
    return "".join(parts)
