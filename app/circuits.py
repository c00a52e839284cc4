"""Views of a stored attribution graph: an interactive Plotly figure and its top paths (interp.attribution's own
path search, run on the stored rows).

The figure puts token positions left to right and layers bottom to top (embeddings at the bottom, the target on
top); nodes of one (layer, position) cell sit side by side. One trace per node kind gives the legend; error nodes
are grey crosses, visibly unlike features. Marker size is |influence|; hover shows the label, value, influence and
cumulative influence. Edges are blue (positive) or red (negative), in three widths by |weight|. `prune_rows` is the
pruning slider's filter: interp.attribution.prune's node rule (circuit-tracer's node threshold) on the stored
cumulative influences.
Every string that reaches the figure is HTML-escaped (Plotly renders a subset of HTML in text and hover).
"""

from __future__ import annotations

import html
from collections import defaultdict

import plotly.graph_objects as go
import polars as pl

from app.components import show_token
from interp.attribution import AttributionGraph, GraphNode
from interp.attribution.prune import ALWAYS_KEPT, OUTSIDE, kept_nodes_from_cumulative

WIDTH, ROW_H, MIN_H = 1400, 46, 420  # figure size: readable at 1,400 px
STYLE = {  # kind -> (legend name, colour, marker symbol)
    "target": ("target", "#b07aa1", "star"),
    "feature": ("feature (click: card)", "#f28e2b", "circle"),
    "attn": ("attention head", "#59a14f", "diamond"),
    "skip": ("transcoder skip path (linear)", "#76b7b2", "hexagon"),
    "embed": ("token embedding", "#4e79a7", "square"),
    "error": ("error (not explained)", "#7f7f7f", "x"),
    "other": ("bias / pruned remainder", "#c7c7c7", "triangle-up"),
}


def plot_text(text: object) -> str:
    """`text` safe for Plotly's text and hover (which render <b>, <br>, <a>...): tags become plain text. Plotly
    decodes &lt;, &gt; and &amp; but shows other entities as typed; quotes outside a tag are plain text."""
    return html.escape(str(text), quote=False)


def node_text(n: dict) -> str:
    """Short raw label of a node (escape before rendering)."""
    if n["kind"] == "feature":
        return f"L{n['layer']}#{n['feature']}"
    if n["kind"] == "attn":
        return f"L{n['layer']}H{n['feature']}"
    if n["kind"] == "skip":
        return f"L{n['layer']} skip"
    if n["kind"] == "embed":
        return show_token(n["token_str"] if n["token_str"] is not None else str(n["feature"]))
    if n["kind"] == "target":
        return n["label"] or "target"
    return {"error": "err"}.get(n["kind"], n["kind"])  # error, bias, pruned: the hover has the details


def prune_rows(
    nodes: pl.DataFrame, edges: pl.DataFrame, threshold: float, leaves: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(nodes, edges) kept at node threshold `threshold`: the target, the embeddings, the smallest set of the most
    influential nodes that holds `threshold` of the normalized influence (interp.attribution.prune's rule on the
    stored cumulative influences); bias/pruned leaves only if `leaves`; edges between kept nodes."""
    other = pl.col("kind").is_in(OUTSIDE)  # the leaves circuit-tracer's graphs have no counterpart of
    # every node of Â is ranked (embeddings too: their share counts); the target's stored 0.0 is no share
    ranked = nodes.filter(~other & (pl.col("kind") != "target"))
    cumulative = dict(
        ranked.drop_nulls("cumulative_influence").select("node_id", "cumulative_influence").iter_rows()
    )
    kept_ranked = kept_nodes_from_cumulative(cumulative, threshold)
    # graphs stored before cumulative influence existed (NULL) keep every node
    unranked = pl.col("cumulative_influence").is_null() & ~other
    keep = (
        pl.col("kind").is_in(ALWAYS_KEPT)
        | pl.col("node_id").is_in(list(kept_ranked))
        | unranked
        | (other & leaves)
    )
    kept = nodes.filter(keep)
    ids = kept["node_id"]
    return kept, edges.filter(pl.col("src_node").is_in(ids) & pl.col("dst_node").is_in(ids))


def layout_xy(rows: list[dict], edges: pl.DataFrame) -> tuple[dict[str, tuple[float, float]], list, list]:
    """(node id -> (x, y), [(token position, column centre x)], row names): row = 0 for embeddings,
    1 + layer for layered nodes, the top row for the target; a cell's nodes spread across its column."""
    top = 2 + max((n["layer"] for n in rows if n["layer"] is not None and n["kind"] != "target"), default=0)
    pos = {n["node_id"]: n["position"] for n in rows}
    for src, dst, _ in edges.iter_rows():  # unpositioned nodes (pruned remainders) sit under what they feed
        if pos.get(src) is None and pos.get(dst) is not None:
            pos[src] = pos[dst]
    pos = {k: v or 0 for k, v in pos.items()}
    columns = sorted(set(pos.values()))
    column = {p: i for i, p in enumerate(columns)}

    def row(n: dict) -> int:
        if n["kind"] == "target":
            return top
        return 0 if n["kind"] == "embed" or n["layer"] is None else 1 + n["layer"]

    cells: dict[tuple[int, int], list[str]] = defaultdict(list)
    for n in sorted(rows, key=lambda n: (n["kind"], n["feature"] or 0)):
        cells[(row(n), column[pos[n["node_id"]]])].append(n["node_id"])
    # a column is as wide as its most crowded cell (one unit per node), so labels in a cell do not overlap
    width = [1] * len(columns)
    for (_, c), members in cells.items():
        width[c] = max(width[c], len(members))
    left = [sum(width[:c]) for c in range(len(columns))]
    xy = {}
    for (r, c), members in cells.items():
        for i, node_id in enumerate(members):
            xy[node_id] = (left[c] + width[c] * (i + 1) / (len(members) + 1), float(r))
    names = ["emb", *[f"L{i}" for i in range(top - 1)], "out"]
    return xy, [(p, left[c] + width[c] / 2) for p, c in column.items()], names


def graph_figure(nodes: pl.DataFrame, edges: pl.DataFrame, token_strs: list[str]) -> go.Figure:
    """The interactive figure of (already pruned) graph rows; points carry their node id as customdata."""
    rows = nodes.to_dicts()
    xy, columns, names = layout_xy(rows, edges)
    fig = go.Figure()
    wmax = max((abs(w) for w in edges["weight"]), default=0.0) or 1.0
    for sign, color in (("+", "#3b6fb6"), ("−", "#d1495b")):
        for k, width in enumerate((0.6, 1.6, 3.2)):
            xs, ys = [], []
            for src, dst, w in edges.iter_rows():
                band = min(2, int(3 * abs(w) / wmax))
                if src in xy and dst in xy and (w >= 0) == (sign == "+") and band == k:
                    xs += [xy[src][0], xy[dst][0], None]
                    ys += [xy[src][1], xy[dst][1], None]
            if xs:
                fig.add_trace(
                    go.Scatter(
                        x=xs, y=ys, mode="lines", line={"color": color, "width": width}, opacity=0.55,
                        hoverinfo="skip", name=f"edge {sign}", legendgroup=f"edge{sign}", showlegend=k == 0,
                    )
                )  # fmt: skip
    infl = max((abs(n["influence"] or 0.0) for n in rows), default=0.0) or 1.0
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for n in rows:
        by_kind[n["kind"] if n["kind"] in STYLE else "other"].append(n)
    for kind, (name, color, symbol) in STYLE.items():
        members = by_kind.get(kind, [])
        if not members:
            continue
        hover = [
            "<br>".join(
                plot_text(line)
                for line in (
                    n["label"] or node_text(n),
                    n.get("feature_label") or "",
                    f"value {n['activation'] or 0:.4g} · influence {n['influence'] or 0:.4g}",
                    "cumulative influence "
                    + ("—" if n["cumulative_influence"] is None else f"{n['cumulative_influence']:.3f}"),
                )
                if line
            )
            for n in members
        ]
        fig.add_trace(
            go.Scatter(
                x=[xy[n["node_id"]][0] for n in members],
                y=[xy[n["node_id"]][1] for n in members],
                mode="markers+text" if kind in ("feature", "target", "error") else "markers",
                text=[plot_text(node_text(n)) for n in members],
                textposition=["top center" if i % 2 == 0 else "bottom center" for i in range(len(members))],
                textfont={"size": 12},
                marker={
                    "color": color,
                    "symbol": symbol,
                    "size": [10 + 16 * abs(n["influence"] or 0.0) / infl for n in members],
                    "line": {"width": 2 if kind == "error" else 1, "color": "#333"},
                },
                customdata=[n["node_id"] for n in members],
                hovertext=hover,
                hoverinfo="text",
                name=name,
            )
        )
    ticks = [
        plot_text(show_token(token_strs[p])) if 0 <= p < len(token_strs) else f"pos {p}" for p, _ in columns
    ]
    fig.update_layout(
        width=WIDTH,
        height=max(MIN_H, ROW_H * (len(names) + 2)),
        margin={"l": 50, "r": 20, "t": 30, "b": 60},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
        dragmode="pan",
        hovermode="closest",
        clickmode="event+select",
        xaxis={
            "tickmode": "array",
            "tickvals": [x for _, x in columns],
            "ticktext": ticks,
            "tickfont": {"size": 13},
            "showgrid": False,
            "zeroline": False,
        },
        yaxis={
            "tickmode": "array",
            "tickvals": list(range(len(names))),
            "ticktext": names,
            "zeroline": False,
        },
    )
    return fig


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
