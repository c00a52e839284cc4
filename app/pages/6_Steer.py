"""Steer: pick features (by id, from a stored circuit, or from a card's link), set what each edit does and how
strongly, and see the greedy continuation without and with the edits side by side, the next tokens whose
probability moved most, and, for one of them, the logit change each edit's direct effect predicts beside the
actual one (interp.interventions).

Deep link: `Steer?model=<model>&edits=L12:345:add:8,L3:7:zero@2_5&prompt=<text>`; a bad edit gets a message
naming the problem instead of a traceback.
"""

import polars as pl
import streamlit as st

from app import components, loaded, steer
from app.components import esc
from interp import interventions as iv
from storage import queries

st.set_page_config(page_title="Steer · Transcoder Atlas", layout="wide")
st.title("Steer")
DEFAULT_PROMPT = "The President said that"
OP_HELP = "set: clamp to the value · scale: multiply · add: add value × decoder direction · zero: ablate"


def read_link(models: list[str]) -> str | None:
    """Apply a new deep link to the page's state; returns a message about a bad link (escaped) or None."""
    url = tuple(st.query_params.get(k) for k in ("model", "edits", "prompt"))
    if st.session_state.get("_steer_url") == url:
        return None
    st.session_state["_steer_url"] = url
    model, edits, prompt = url
    if model in models:
        st.session_state["steer_model"] = model
    if prompt is not None:
        st.session_state["steer_prompt"] = prompt
    if edits is not None:
        try:
            set_edits(iv.parse_edits(edits))
        except iv.InterventionError as e:
            set_edits([])
            return f"The link's edits are not valid: {esc(e)}"
    if model is not None and model not in models:
        return (
            f"The link names an unknown model, {esc(model)}. Models in the atlas: {esc(', '.join(models))}."
        )
    return None


def set_edits(edits: list[iv.Edit]) -> None:
    """Replace the edit list; the per-edit widgets restart from it."""
    for key in [k for k in st.session_state if str(k).startswith(("steer_op_", "steer_value_"))]:
        del st.session_state[key]
    st.session_state["steer_edits"] = list(edits)


def add_edits(new: list[iv.Edit]) -> None:
    edits = current_edits()
    room = iv.MAX_EDITS - len(edits)
    if len(new) > room:
        st.session_state["_steer_msg"] = (
            f"At most {iv.MAX_EDITS} edits at once; {len(new) - max(room, 0)} not added."
        )
    set_edits(edits + new[: max(room, 0)])


def remove_edit(i: int) -> None:
    edits = current_edits()
    set_edits(edits[:i] + edits[i + 1 :])


def current_edits() -> list[iv.Edit]:
    """The edit list with each edit's op and value as its widgets now say."""
    out = []
    for i, e in enumerate(st.session_state.get("steer_edits", [])):
        op = st.session_state.get(f"steer_op_{i}", e.op)
        value = float(st.session_state.get(f"steer_value_{i}", e.value))
        out.append(iv.Edit(e.layer, e.feature, op, value, e.positions))
    return out


def edit_rows(edits: list[iv.Edit], tids: dict[int, str], labels: dict) -> None:
    for i, e in enumerate(edits):
        st.session_state.setdefault(f"steer_op_{i}", e.op)
        st.session_state.setdefault(f"steer_value_{i}", float(e.value))
        c1, c2, c3, c4 = st.columns([5, 2, 2, 1], vertical_alignment="bottom")
        tid = tids.get(e.layer)
        where = "all positions" if e.positions is None else "positions " + ", ".join(map(str, e.positions))
        with c1:
            link = (
                components.feature_link(tid, e.feature, e.layer, labels.get((tid, e.feature)))
                if tid
                else esc(f"L{e.layer} #{e.feature}")
            )
            components.html_block(
                f"<div class='atlas-steer-edit'>{link} <span style='color:grey'>{esc(where)}</span></div>"
            )
        c2.selectbox("op", iv.OPS, key=f"steer_op_{i}", help=OP_HELP)
        c3.number_input(
            "value", -iv.MAX_STRENGTH, iv.MAX_STRENGTH, key=f"steer_value_{i}", step=1.0,
            disabled=st.session_state[f"steer_op_{i}"] == "zero",
        )  # fmt: skip
        c4.button("✕", key=f"steer_remove_{i}", on_click=remove_edit, args=(i,), help="remove this edit")


def add_by_id_clicked() -> None:
    """The Add button's callback: it runs before the rerun, so it reads the widgets' new values itself."""
    ss = st.session_state
    add_edits(
        [
            iv.Edit(
                ss["steer_add_layer"],
                int(ss["steer_add_feature"]),
                ss["steer_add_op"],
                float(ss["steer_add_value"]),
            )
        ]
    )


def add_by_id(layers: dict[int, dict]) -> None:
    with st.expander("Add a feature by id", expanded=not st.session_state.get("steer_edits")):
        c1, c2, c3, c4, c5 = st.columns([2, 2, 2, 2, 1], vertical_alignment="bottom")
        layer = c1.selectbox("layer", sorted(layers), key="steer_add_layer")
        d_sae = int(layers[layer]["d_sae"])
        c2.number_input(f"feature (0–{d_sae - 1:,})", 0, d_sae - 1, key="steer_add_feature")
        c3.selectbox("op", iv.OPS, index=iv.OPS.index("add"), key="steer_add_op", help=OP_HELP)
        c4.number_input("value", -iv.MAX_STRENGTH, iv.MAX_STRENGTH, 4.0, key="steer_add_value")
        c5.button("Add", key="steer_add", on_click=add_by_id_clicked)


def add_from_circuit(model_name: str, layers: dict[int, dict]) -> None:
    graphs = queries.graphs()
    graphs = graphs.filter(pl.col("model") == model_name)
    if graphs.height == 0:
        return
    with st.expander("Add features from a stored circuit"):
        prompts = dict(zip(graphs["graph_id"], graphs["prompt"]))
        gid = st.selectbox(
            "graph", list(prompts), key="steer_graph", format_func=lambda g: f"{g}: {prompts[g][:60]!r}"
        )
        nodes = queries.graph(gid)["nodes"].filter(pl.col("kind") == "feature")
        options = sorted(
            {
                (int(r["layer"]), int(r["feature"]))
                for r in nodes.iter_rows(named=True)
                if r["layer"] in layers
            }
        )
        st.multiselect(
            "feature nodes", options, key="steer_graph_nodes", format_func=lambda o: f"L{o[0]} #{o[1]}"
        )
        c1, c2 = st.columns(2)
        c1.button(
            "Zero-ablate these",
            key="steer_add_graph",
            on_click=lambda: add_edits(
                [iv.Edit(layer, f, "zero") for layer, f in st.session_state.get("steer_graph_nodes", [])]
            ),
        )
        c2.button(
            "Use the circuit's prompt",
            key="steer_graph_prompt",
            on_click=lambda: st.session_state.__setitem__("steer_prompt", prompts[gid]),
        )


def main() -> None:
    tcs = components.transcoders_or_stop()
    models = tcs["model"].unique(maintain_order=True).to_list()
    problem = read_link(models)
    if problem:
        st.error(problem)
    st.session_state.setdefault("steer_prompt", DEFAULT_PROMPT)
    st.session_state.setdefault("steer_edits", [])
    model_name = st.selectbox("Model", models, key="steer_model")
    rows = tcs.filter(pl.col("model") == model_name)
    layers = {int(r["layer"]): r for r in rows.iter_rows(named=True)}
    tids = {layer: r["transcoder_id"] for layer, r in layers.items()}

    prompt = st.text_area("Prompt", key="steer_prompt")
    c1, c2 = st.columns(2)
    max_new = c1.slider("New tokens", 1, 64, 20, key="steer_new")
    attention = c2.radio(
        "Attention", ["live", "frozen"], key="steer_attention", horizontal=True,
        help="frozen: every attention pattern is taken from the unedited run on the same tokens",
    )  # fmt: skip

    st.subheader("Edits")
    edits = st.session_state["steer_edits"]
    try:  # a link's edits, before any widget shows them
        steer.check(model_name, layers, edits)
    except iv.InterventionError as e:
        set_edits([])
        st.error(esc(e))
        st.stop()
    labels = queries.feature_labels([(tids[e.layer], e.feature) for e in edits if e.layer in tids])
    edit_rows(edits, tids, labels)
    add_by_id(layers)
    add_from_circuit(model_name, layers)
    if msg := st.session_state.pop("_steer_msg", None):
        st.warning(esc(msg))
    edits = current_edits()
    st.query_params.update(model=model_name, edits=iv.format_edits(edits), prompt=prompt)
    st.session_state["_steer_url"] = (model_name, iv.format_edits(edits), prompt)
    if not edits or not prompt.strip():
        st.info("Add at least one edit and type a prompt.")
        st.stop()
    try:
        steer.check(model_name, layers, edits)
    except iv.InterventionError as e:
        st.error(esc(e))
        st.stop()

    m = loaded.model(model_name)
    tcs_loaded = steer.transcoders_for(layers, edits)
    freeze = attention == "frozen"
    try:
        result = steer.steer(m, tcs_loaded, prompt, edits, max_new, freeze)
    except iv.InterventionError as e:
        st.error(esc(e))
        st.stop()
    if result.cut:
        st.caption(f"Only the first {steer.MAX_PROMPT_TOKENS} tokens of the prompt are used.")
    left, right = st.columns(2)
    left.caption("Without edits")
    right.caption("With edits")
    with left:
        components.html_block(steer.generation_html(result.prompt, result.plain, "atlas-steer-plain"))
    with right:
        components.html_block(steer.generation_html(result.prompt, result.edited, "atlas-steer-edited"))

    def token_str(t: int) -> str:
        return m.tokenizer.decode([t])

    st.subheader("Next token: what moved")
    st.caption(
        "Probabilities after the prompt's last token, without and with the edits; largest changes first."
    )
    components.html_block(steer.moved_html(result.moved, token_str))

    st.subheader("Predicted vs actual")
    options = [t.token for t in result.moved]
    target = st.selectbox(
        "Target token", options, key="steer_target", format_func=lambda t: components.show_token(token_str(t))
    )
    each = len(edits) <= steer.EACH_EDIT_MAX
    effects = iv.logit_effects(
        m, m.to_tokens(prompt)[0][: steer.MAX_PROMPT_TOKENS], tcs_loaded, edits, target, freeze, each
    )
    st.caption(
        "Predicted: the change of the target's logit that the edited features' direct effects give (attention "
        "patterns and norm scales frozen at the unedited run, no path through another MLP). Actual: the change in "
        f"the running model (attention {attention}, every other MLP live). Where they differ, the linear picture "
        "does not hold."
        + ("" if each else f" With more than {steer.EACH_EDIT_MAX} edits only their sum is shown.")
    )
    components.html_block(steer.effects_html(effects))


components.run_page(main)
