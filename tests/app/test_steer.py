"""The Steer page and the card's "try this feature" against the fixture atlas (tiny model, two random transcoders
at layers 0 and 1 of its 3 layers), checked against interp.interventions run independently."""

from __future__ import annotations

import html as html_lib
import re

import pytest
import torch

from app.components import esc
from interp import interventions as iv
from tests.app.fixture_db import D_SAE, HOSTILE_FEATURE
from tests.app.test_pages import html as page_html
from tests.app.test_pages import run

STEP_TIMEOUT = 300  # a page run that steers generates tokens with the model


def section(page: str, css_class: str) -> str:
    start = page.index(f"class='{css_class}'")
    return page[start : page.index("</div>", start)]


def generated(page: str, css_class: str) -> str:
    return "".join(
        html_lib.unescape(t)
        for t in re.findall(r"<span class='atlas-gen'[^>]*>(.*?)</span>", section(page, css_class))
    )


def _transcoders(atlas_db, layers):
    from storage import layout
    from storage.transcoders import load_transcoder

    assert layout  # ATLAS_HOME is the fixture's
    return {
        layer: load_transcoder(atlas_db["transcoders"][layer]).eval().requires_grad_(False)
        for layer in layers
    }


def test_steer_page_without_a_database_says_how_to_build_one(atlas_home):
    at = run("steer", STEP_TIMEOUT)
    assert any("make atlas" in i.value for i in at.info)


def test_a_deep_link_shows_both_generations_what_moved_and_predicted_vs_actual(atlas_db, tiny_model):
    edits = "L1:3:add:40,L0:5:set:3@2_3"
    at = run("steer", STEP_TIMEOUT, edits=edits, prompt="the cat sat", model=atlas_db["model"])
    assert [e.value for e in at.error] == []
    page = page_html(at)
    tcs = _transcoders(atlas_db, [0, 1])
    tokens = tiny_model.to_tokens("the cat sat")[0]
    want = iv.parse_edits(edits)
    decode = tiny_model.tokenizer.decode
    plain = iv.generate(tiny_model, tokens, tcs, [], 20)
    steered = iv.generate(tiny_model, tokens, tcs, want, 20)
    assert generated(page, "atlas-steer-plain") == "".join(decode([t]) for t in plain.tolist())
    assert generated(page, "atlas-steer-edited") == "".join(decode([t]) for t in steered.tolist())
    assert "the cat sat" in section(page, "atlas-steer-plain")
    # the moved tokens: the largest probability change first, as interp computes it
    run_ = iv.run_with_edits(tiny_model, tokens, tcs, want)
    moved = iv.moved_tokens(run_.clean_logits[-1], run_.logits[-1])
    table = page[page.index("atlas-steer-moved") :]
    assert f"<td>{moved[0].delta:+.3f}</td>" in table.split("</tr>")[1]
    # predicted vs actual for the default target (the token that moved most): one row per edit plus all together
    effects = iv.logit_effects(tiny_model, tokens, tcs, want, moved[0].token)
    rows = page[page.index("atlas-steer-effects") :].split("<tr>")[2:]
    assert len(rows) == 3 and "all edits together" in rows[2]
    for row, e in zip(rows, effects):
        assert f"<td>{e.predicted:+.3f}</td><td>{e.actual:+.3f}</td>" in row
    # the widgets show the link's edits, and the URL keeps them
    assert (
        at.selectbox(key="steer_op_0").value == "add" and at.number_input(key="steer_value_0").value == 40.0
    )
    assert at.query_params["edits"] in (edits, [edits])


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        (
            f"L1:{D_SAE}:add:1",
            f"feature {D_SAE} does not exist; layer 1's transcoder has features 0..{D_SAE - 1}",
        ),
        ("L9:0:add:1", "layer 9 does not exist; the model has layers 0..2"),
        ("L2:0:add:1", "layer 2 has no transcoder (layers with one: 0, 1)"),
        ("L1:3:add:nan", "the value nan is not a finite number"),
        ("L1:3:add:1e400", "the value inf is not a finite number"),
        ("L1:3:scale:1e9", "is too large"),
        (",".join(["L1:3:zero"] * 65), "65 edits given; at most 64 edits are allowed at once"),
        ("L1:3:boost:2", "unknown op 'boost'"),
        ("L1:3:add:4@0", "0 is BOS, never edited"),
        ("[x](https://evil.example/)", "is not 'L<layer>:<feature>:<op>"),
    ],
)
def test_bad_edits_in_a_link_get_one_clear_message(atlas_db, edits, message):
    at = run("steer", STEP_TIMEOUT, edits=edits, prompt="ab")
    errors = [html_lib.unescape(e.value) for e in at.error]
    assert len(errors) == 1 and message in errors[0], errors
    assert "Traceback" not in errors[0] and "](" not in at.error[0].value
    assert "atlas-steer-edited" not in page_html(at)


def test_edits_added_by_id_changed_and_removed_follow_into_the_url(atlas_db):
    at = run("steer", STEP_TIMEOUT, prompt="ab")
    assert any("Add at least one edit" in i.value for i in at.info)
    at.selectbox(key="steer_add_layer").set_value(1)
    at.number_input(key="steer_add_feature").set_value(HOSTILE_FEATURE)
    at.number_input(key="steer_add_value").set_value(7.0)
    at.button(key="steer_add").click().run()
    assert not at.exception and at.query_params["edits"] in ("L1:3:add:7", ["L1:3:add:7"])
    assert "atlas-steer-edited" in page_html(at)
    # the feature's label is escaped (the fixture's label of feature 3 holds a <script> tag)
    assert esc("<script>") in page_html(at) and "<script" not in page_html(at)
    at.selectbox(key="steer_op_0").set_value("zero").run()
    assert at.query_params["edits"] in ("L1:3:zero", ["L1:3:zero"])
    at.number_input(key="steer_add_feature").set_value(5)
    at.button(key="steer_add").click().run()
    assert at.query_params["edits"] in ("L1:3:zero,L1:5:add:7", ["L1:3:zero,L1:5:add:7"])
    at.button(key="steer_remove_0").click().run()
    assert not at.exception and at.query_params["edits"] in ("L1:5:add:7", ["L1:5:add:7"])
    assert at.number_input(key="steer_value_0").value == 7.0


def test_features_of_a_stored_circuit_can_be_ablated(atlas_db):
    at = run("steer", STEP_TIMEOUT, prompt="ab")
    at.multiselect(key="steer_graph_nodes").select((0, HOSTILE_FEATURE)).select((1, HOSTILE_FEATURE))
    at.button(key="steer_add_graph").click().run()
    assert not at.exception
    assert at.query_params["edits"] in ("L0:3:zero,L1:3:zero", ["L0:3:zero,L1:3:zero"])
    at.button(key="steer_graph_prompt").click().run()
    assert at.text_area(key="steer_prompt").value.startswith("The tag <script>")
    assert "<script" not in page_html(at)


def test_a_hostile_prompt_is_shown_as_text(atlas_db):
    at = run("steer", STEP_TIMEOUT, edits="L0:1:add:2", prompt="<img src=x onerror=alert(1)>")
    page = page_html(at)
    assert "&lt;img src=x onerror=alert" in section(page, "atlas-steer-plain")
    assert "<img" not in page


def test_try_this_feature_shades_typed_text_by_the_feature_without_bos(atlas_db, tiny_model):
    tid = atlas_db["transcoders"][1]
    at = run("card", STEP_TIMEOUT, transcoder=tid, feature="5")
    page = page_html(at)
    link = re.search(r"class='atlas-steer-link' href='([^']*)'", page)[1]
    assert html_lib.unescape(link).endswith("&edits=L1%3A5%3Aadd%3A" + link.rsplit("%3A", 1)[1])
    text = "a<b>c"
    at.text_input(key="card_try_text").input(text).run()
    assert not at.exception, at.exception
    block = section(page_html(at), "atlas-try")
    assert block.count("atlas-tok") == len(text) and "atlas-bos" not in block  # one token per character
    assert "&lt;b&gt;" in block or "&lt;" in block
    tc = _transcoders(atlas_db, [1])[1]
    store = {}
    tiny_model.blocks[1].ln2.hook_normalized.add_hook(lambda x, hook: store.__setitem__("x", x.clone()))
    with torch.no_grad():
        tiny_model(tiny_model.to_tokens(text))
    tiny_model.reset_hooks()
    z = tc.encode(store["x"][0])[1:, 5]
    values = [float(v) for v in re.findall(r'title="([-\d.]+)"', block)]
    assert values == pytest.approx(z.tolist(), abs=1e-3)
