"""Every page of the app against the fixture atlas (Streamlit AppTest, no browser)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.components import card_url, esc
from tests.app.fixture_db import HOSTILE_FEATURE, IMG, SCRIPT

APP = Path(__file__).resolve().parents[2] / "app"
PAGES = {
    "home": APP / "Home.py",
    "features": APP / "pages" / "1_Features.py",
    "card": APP / "pages" / "2_Feature_card.py",
    "circuits": APP / "pages" / "3_Circuits.py",
    "live": APP / "pages" / "4_Live.py",
    "sql": APP / "pages" / "5_SQL.py",
}


def run(page: str, **params: str) -> AppTest:
    at = AppTest.from_file(str(PAGES[page]), default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def html(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def assert_no_markup_from_tokens(text: str) -> None:
    """Hostile token strings appear only escaped: never as a tag the browser would parse."""
    assert "<script" not in text.lower() and "<img" not in text.lower()


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_stops_with_make_atlas_hint_without_database(atlas_home, page):
    at = run(page)
    assert any("make atlas" in i.value for i in at.info), [i.value for i in at.info]


def test_pages_stop_with_a_hint_on_an_empty_database(atlas_home):
    from storage import db

    with db.writer():  # migrated, nothing materialized yet
        pass
    for page in ("home", "card"):
        assert any("no transcoders yet" in i.value for i in run(page).info)


def test_home_shows_transcoders_metrics_curves_and_lineage(atlas_db):
    at = run("home")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["transcoders"] == "2" and metrics["features"] == "32"
    table = at.dataframe[0].value
    assert list(table["layer"]) == [0, 1] and list(table["l0"]) == pytest.approx([12.0, 13.0])
    assert at.selectbox(key="curve_metric").value == "fvu"
    corpus = at.dataframe[1].value  # lineage: the fixture's 6 eval contexts of 12 tokens from one document
    assert (
        list(corpus["contexts"]) == [6]
        and list(corpus["tokens"]) == [72]
        and list(corpus["documents"]) == [1]
    )
    assert len(at.expander) == 2 and "corpus" in at.expander[0].json[0].value


def test_feature_browser_filters_by_token_label_layer_and_density(atlas_db):
    at = run("features")
    assert len(at.dataframe[0].value) == 32
    at.text_input(key="token").input("a").run()
    rows = at.dataframe[0].value
    # token_features: 'a' -> features 7 (mean 1.5) and 2 (mean 0.5) in both layers, sorted by max_act
    assert sorted(zip(rows["layer"], rows["feature"])) == [(0, 2), (0, 7), (1, 2), (1, 7)]
    at.text_input(key="token").input("").run()
    at.text_input(key="label").input("SCRIPT").run()
    at.multiselect(key="layers").select(1).run()
    rows = at.dataframe[0].value
    assert list(rows["feature"]) == [HOSTILE_FEATURE] and list(rows["layer"]) == [1]
    at.text_input(key="label").input("").run()
    at.slider(key="density").set_range(0.9, 1.0).run()
    assert any("No feature matches" in i.value for i in at.info)


def test_feature_card_deep_link_renders_escaped_examples_effects_and_links(atlas_db):
    tid = atlas_db["transcoders"][1]
    at = run("card", transcoder=tid, feature=str(HOSTILE_FEATURE))
    assert at.selectbox(key="card_transcoder").value == tid
    assert at.number_input(key="card_feature").value == HOSTILE_FEATURE
    page = html(at)
    assert f"L1 #{HOSTILE_FEATURE} <span" in page
    assert "&lt;script&gt;alert" in page and "&lt;img src=x onerror=alert" in page
    assert_no_markup_from_tokens(page)
    # every example token shaded, its value on hover; the top example's peak token carries 2.000
    assert 'title="2.000"' in page and page.count("atlas-tok") == 7 * 8
    # upstream edge L0 #3 and its neighbour link to their cards
    l0 = atlas_db["transcoders"][0]
    assert esc(card_url(l0, HOSTILE_FEATURE)) in page
    # token effects: escaped tokens in fixture order with their values; quantiles at their levels
    fx = page[page.index("atlas-fx-deembed") : page.index("</table>", page.index("atlas-fx-deembed"))]
    assert fx.index(esc(SCRIPT)) < fx.index(esc(IMG)) and "+1.000" in fx and "+0.900" in fx
    assert "<td><code>q0&#46;5</code></td><td>+0.500</td>" in page
    assert any("database" in c.value for c in at.caption)


def test_feature_card_widgets_update_the_url(atlas_db):
    at = run("card")
    at.number_input(key="card_feature").set_value(5).run()
    assert not at.exception
    assert at.query_params["feature"] == ["5"] or at.query_params["feature"] == "5"
    assert "feature 5 of layer 0" in html(at)


def test_circuits_page_draws_graph_with_card_links_and_ranks_paths(atlas_db):
    at = run("circuits")
    page = html(at)
    assert "<svg" in page and page.count("<circle") == 5
    for tid in atlas_db["transcoders"]:
        assert esc(card_url(tid, HOSTILE_FEATURE)) in page
    assert_no_markup_from_tokens(page)
    # path attributions by hand (fixture_db; interp.attribution's rule: an edge's weight times the share of
    # each feature's activation it explains): f1->t 2.4; f0->f1->t 2.4*1.0/1.5; e4->f0->f1->t 1.6*2.0/2.0;
    # e4->f1->t 2.4*0.5/1.5; err->t 0.6
    items = page[page.index("atlas-paths") :].split("<li>")[1:]
    assert [float(i.split("<code>")[1].split("</code>")[0]) for i in items] == [2.4, 1.6, 1.6, 0.8, 0.6]
    assert items[0].count("&rarr;") == 1 and items[2].count("&rarr;") == 3 and "error" not in items[1]
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert f'text-anchor="middle">{esc(IMG)}</text>' in svg  # prompt token (position 5) under its column


def test_live_page_lists_the_features_that_fire_on_each_token(atlas_db, tiny_model):
    import torch

    from interp.transcoder import Transcoder
    from storage import layout

    at = AppTest.from_file(str(PAGES["live"]), default_timeout=300)
    at.run()
    text = "a<script>"
    at.slider(key="live_k").set_value(1).run()
    at.text_area(key="live_text").input(text).run()
    assert not at.exception, at.exception
    page = html(at)
    assert "&lt;" in page and "&gt;" in page
    assert_no_markup_from_tokens(page)
    # independent recomputation: the strongest layer-1 feature at the last token
    tid = atlas_db["transcoders"][1]
    tc = Transcoder.load(layout.transcoder_dir(tid))
    store = {}

    def keep(x, hook):
        store["x"] = x.clone()

    tiny_model.blocks[1].ln2.hook_normalized.add_hook(keep)
    with torch.no_grad():
        tiny_model(tiny_model.to_tokens(text))
    tiny_model.reset_hooks()
    z = tc.encode(store["x"][0, -1])
    rows = page.split("<tr>")
    assert esc(card_url(tid, int(z.argmax()))) in rows[-1] and f"<code>{z.max():.2f}</code>" in rows[-1]
    assert len(rows) == 2 + len(text) + 1  # header + BOS + one row per character


def test_sql_console_runs_examples_with_parameters_and_limits_rows(atlas_db):
    at = run("sql")
    assert list(at.dataframe[0].value.columns)[:2] == ["transcoder_id", "feature"]  # first example ran
    at.selectbox(key="sql_example").set_value("feature_health_by_layer").run()
    health = at.dataframe[0].value
    assert list(health["layer"]) == [0, 1] and list(health["n_features"]) == [16, 16]
    at.selectbox(key="sql_example").set_value("features_firing_on_token").run()
    at.text_input(key="sql_param_features_firing_on_token_token").input("a").run()
    fired = at.dataframe[
        0
    ].value  # token_features of 'a' in the fixture: features 7 (1.5) and 2 (0.5) per layer
    assert list(fired["feature"]) == [7, 7, 2, 2] and list(fired["mean_act"]) == [1.5, 1.5, 0.5, 0.5]
    at.text_area(key="sql").input("SELECT * FROM range(5000)").run()
    assert len(at.dataframe[0].value) == 1000
    assert any("cut at 1,000" in c.value for c in at.caption)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("CREATE TABLE x (a INTEGER)", "read-only: CREATE"),
        ("COPY features TO 'out.csv'", "read-only: COPY"),
        ("ATTACH 'other.duckdb'", "read-only: ATTACH"),
        ("SELECT * FROM read_csv('/etc/passwd')", "cannot read or write files"),
    ],
)
def test_sql_console_rejects_writes_and_file_access_with_a_clear_message(atlas_db, sql, message):
    at = run("sql")
    at.text_area(key="sql").input(sql).run()
    assert not at.exception
    assert [e.value for e in at.error] and message in at.error[0].value
    assert len(at.dataframe) == 0


@pytest.mark.slow
def test_live_page_runs_the_embedded_model_by_name(atlas_home, tmp_path):
    """The real SmolLM2 found by its name under $ATLAS_HOME/models (as `make atlas` leaves it), real hooks."""
    import torch

    from interp.model import load_model
    from interp.transcoder import Transcoder
    from storage import layout
    from tests.app import fixture_db

    converted = Path(__file__).resolve().parents[2] / "data" / "models" / "smollm2-135m"
    if not (converted / "config.json").exists():
        pytest.skip("the embedded model is not converted yet (make data)")
    Path(layout.models_dir()).mkdir(parents=True)
    (Path(layout.models_dir()) / "smollm2-135m").symlink_to(converted)
    ids = fixture_db.build(str(converted), d_model=576, model="smollm2-135m")
    at = AppTest.from_file(str(PAGES["live"]), default_timeout=600)
    at.run()
    at.slider(key="live_k").set_value(1).run()
    text = " The President said"
    at.text_area(key="live_text").input(text).run()
    assert not at.exception, at.exception
    rows = html(at).split("<tr>")
    model = load_model(str(converted), device="cpu")
    tokens = model.to_tokens(text)
    assert len(rows) == 2 + tokens.shape[1]
    store = {}

    def keep(x, hook):
        store["x"] = x.clone()

    model.blocks[1].ln2.hook_normalized.add_hook(keep)
    with torch.no_grad():
        model(tokens)
    tid = ids["transcoders"][1]
    z = Transcoder.load(layout.transcoder_dir(tid)).encode(store["x"][0, -1])
    assert esc(card_url(tid, int(z.argmax()))) in rows[-1]
