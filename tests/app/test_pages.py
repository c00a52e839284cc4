"""Every page of the app against the fixture atlas (Streamlit AppTest, no browser)."""

from __future__ import annotations

import html as html_lib
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.components import WORD_JOINER, card_url, esc
from tests.app.fixture_db import (
    D_SAE,
    DEAD_FEATURE,
    FIRST_FEATURE,
    HOSTILE_FEATURE,
    IMG,
    SCRIPT,
    TOKEN_FEATURE,
)

APP = Path(__file__).resolve().parents[2] / "app"
PAGES = {
    "home": APP / "Home.py",
    "features": APP / "pages" / "1_Features.py",
    "card": APP / "pages" / "2_Feature_card.py",
    "circuits": APP / "pages" / "3_Circuits.py",
    "live": APP / "pages" / "4_Live.py",
    "sql": APP / "pages" / "5_SQL.py",
    "steer": APP / "pages" / "6_Steer.py",
}


def run(page: str, timeout: float = 120, **params: str) -> AppTest:
    """The page `page` (a key of PAGES) run once with `params` as query parameters; fails on an exception."""
    at = AppTest.from_file(str(PAGES[page]), default_timeout=timeout)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def html(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def frame_with(at: AppTest, column: str):
    """The first data frame on the page that has `column`."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def shown(elements) -> list[str]:
    """What the browser shows for markdown elements (numeric entities decoded as CommonMark does; the invisible
    word joiners that break autolinks dropped)."""
    return [html_lib.unescape(e.value).replace(WORD_JOINER, "") for e in elements]


def assert_no_markup_from_tokens(text: str) -> None:
    """Hostile token strings appear only escaped: never as a tag the browser would parse."""
    assert "<script" not in text.lower() and "<img" not in text.lower()


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_stops_with_make_atlas_hint_without_database(atlas_home, page):
    at = run(page)
    assert any("make atlas" in i.value for i in at.info), [i.value for i in at.info]


def test_pages_stop_with_a_hint_on_an_empty_database(atlas_home):
    from storage.db import working_copy

    with working_copy.writer():  # migrated, nothing materialized yet
        pass
    for page in ("home", "card"):
        assert any("no transcoders yet" in i.value for i in run(page).info)


def test_home_shows_transcoders_metrics_curves_and_lineage(atlas_db):
    at = run("home")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["transcoders"] == "2" and metrics["features"] == str(2 * D_SAE)
    table = frame_with(at, "goals")
    assert list(table["layer"]) == [0, 1] and list(table["l0"]) == pytest.approx([12.0, 13.0])
    assert "created_at" not in table.columns and "goals" in table.columns  # the summary fits the page
    assert at.selectbox(key="curve_metric").value == "fvu"
    corpus = frame_with(at, "documents")  # lineage: 6 eval contexts of 12 tokens from one document
    assert (
        list(corpus["contexts"]) == [6]
        and list(corpus["tokens"]) == [72]
        and list(corpus["documents"]) == [1]
    )
    assert len(at.expander) == 3 and "corpus" in at.expander[1].json[0].value


def test_home_flags_metrics_that_miss_a_goal(atlas_db):
    """Fixture: CE recovered 0.80 on both layers whose MLP matters (ablating costs 1 nat); L0, dead, FVU fine."""
    at = run("home")
    table = frame_with(at, "goals")
    assert list(table["goals"]) == ["CE recovered 0.800 < 0.90"] * 2
    assert list(table["mlp_matters"]) == [True, True]
    warnings = shown(at.warning)
    assert warnings == [f"Layer {layer}: CE recovered 0.800 < 0.90" for layer in (0, 1)]


def _quality_line(at: AppTest) -> list[str]:
    return [c for c in shown(at.caption) if c.startswith("Transcoder quality")]


def test_home_and_feature_card_show_the_ce_recovered_interval(atlas_db):
    """Fixture: layer 0 stored with its bootstrap interval [0.76, 0.84] over 256 contexts, layer 1 without one."""
    at = run("home")
    assert list(frame_with(at, "goals")["ce_recovered_95"]) == ["[0.760, 0.840]", ""]
    at = run("card", transcoder=atlas_db["transcoders"][0], feature="1")
    assert _quality_line(at) == [
        "Transcoder quality: CE recovered 0.800, 95% interval [0.760, 0.840] over 256 contexts (spliced alone "
        "into the model; goals on Home)."
    ]
    at = run("card", transcoder=atlas_db["transcoders"][1], feature="1")
    assert _quality_line(at) == [
        "Transcoder quality: CE recovered 0.800 (spliced alone into the model; goals on Home)."
    ]


def test_feature_browser_filters_by_token_label_layer_and_density(atlas_db):
    at = run("features")
    assert len(at.dataframe[0].value) == 2 * (D_SAE - 3)  # artifacts and dead features hidden by default
    at.text_input(key="token").input("a").run()
    rows = at.dataframe[0].value
    # token_features: 'a' -> features 7 (mean 1.5) and 2 (mean 0.5) in both layers
    assert sorted(zip(rows["layer"], rows["feature"])) == [(0, 2), (0, 7), (1, 2), (1, 7)]
    at.text_input(key="token").input("").run()
    at.text_input(key="label").input("SCRIPT").run()
    at.multiselect(key="layers").select(1).run()
    rows = at.dataframe[0].value
    assert list(rows["feature"]) == [HOSTILE_FEATURE] and list(rows["layer"]) == [1]
    at.text_input(key="label").input("").run()
    at.slider(key="density").set_range(0.9, 1.0).run()
    assert any("No feature matches" in i.value for i in at.info)


def test_feature_browser_sorts_by_contexts_and_flags_artifacts_and_dead_features(atlas_db):
    at = run("features")
    assert at.selectbox(key="order").value == "n_contexts" and at.selectbox(key="show").value == "live"
    rows = at.dataframe[0].value
    assert list(rows["n_contexts"]) == sorted(rows["n_contexts"], reverse=True)
    assert set(rows["status"]) == {""}
    at.selectbox(key="show").set_value("all").run()
    rows = at.dataframe[0].value
    status = {(r.layer, r.feature): r.status for r in rows.itertuples()}
    assert len(rows) == 2 * D_SAE
    assert status[(0, FIRST_FEATURE)] == "artifact: BOS / first token"
    assert status[(1, TOKEN_FEATURE)] == "artifact: one frequent token"
    assert status[(0, DEAD_FEATURE)] == "dead"
    at.selectbox(key="show").set_value("artifacts").run()
    assert sorted(at.dataframe[0].value["feature"]) == sorted([FIRST_FEATURE, TOKEN_FEATURE] * 2)


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
    # the histogram has axes, counts and its bin scale; the statistics say how many activations they rest on
    svg = page[page.index('<svg class="atlas-hist"') : page.index("</svg>", page.index("atlas-hist"))]
    assert ">tokens</text>" in svg and ">5</text>" in svg and "log-spaced bins, each x2.00 wider" in svg
    assert "5 tokens</title>" in svg and ">0.25</text>" in svg and ">4</text>" in svg
    captions = [c.value for c in at.caption]
    assert "Activation histogram of its 11 active tokens" in captions
    assert "Activation quantiles over 20 active tokens" in captions
    assert any("Only 20 active tokens in 6 contexts" in w for w in shown(at.warning))
    # windows starting at position 1 continue to the left of the window: an ellipsis, no start badge
    assert page.count("atlas-cont") == 7 and "atlas-bos" not in page


def test_feature_card_marks_the_context_start_and_flags_an_artifact(atlas_db):
    tid = atlas_db["transcoders"][0]
    at = run("card", transcoder=tid, feature=str(FIRST_FEATURE))
    page = html(at)
    # every example window starts at position 0: its first token is BOS, shown as a 'start' badge
    assert page.count('class="atlas-bos"') == 7 and "atlas-cont" not in page
    assert "atlas-badge" in page and "artifact: BOS / first token" in html_lib.unescape(page)
    assert any("100% of its 3 top examples fire on the first token after BOS" in w for w in shown(at.warning))


def test_feature_card_flags_a_transcoder_that_misses_a_goal(atlas_db):
    from storage.db import working_copy

    tid = atlas_db["transcoders"][1]
    at = run("card", transcoder=tid, feature="1")
    before = [c for c in shown(at.caption) if "misses a quality goal" in c]
    assert len(before) == 1 and "CE recovered 0.800 < 0.90" in before[0] and "FVU" not in before[0]
    with working_copy.writer() as con:
        con.execute("UPDATE transcoder_metrics SET fvu = 0.97 WHERE transcoder_id = ?", [tid])
    at = run("card", transcoder=tid, feature="1")
    flagged = [c for c in shown(at.caption) if "misses a quality goal" in c]
    assert len(flagged) == 1 and "FVU 0.970 > 0.9" in flagged[0] and "CE recovered 0.800 < 0.90" in flagged[0]


def test_dead_feature_card_says_dead_instead_of_zero_statistics(atlas_db):
    tid = atlas_db["transcoders"][0]
    at = run("card", transcoder=tid, feature=str(DEAD_FEATURE))
    page = html(at)
    assert any(
        w.startswith("Dead feature: it never fired on the 1,000 held-out tokens") for w in shown(at.warning)
    )
    assert "atlas-quantiles" not in page and "atlas-hist" not in page and "+0.000" not in page
    assert "atlas-example" not in page and "dead" in html_lib.unescape(page)


def test_feature_card_previous_and_next_buttons(atlas_db):
    tid = atlas_db["transcoders"][0]
    at = run("card", transcoder=tid, feature="0")
    assert at.button(key="card_prev").disabled
    at.button(key="card_next").click().run()
    at.button(key="card_next").click().run()
    assert at.number_input(key="card_feature").value == 2 and "L0 #2 <span" in html(at)
    at.button(key="card_prev").click().run()
    assert at.number_input(key="card_feature").value == 1
    at = run("card", transcoder=tid, feature=str(D_SAE - 1))
    assert at.button(key="card_next").disabled and not at.button(key="card_prev").disabled


@pytest.mark.parametrize("value", ["-1", "abc", "3.5", "999999", str(D_SAE), "", "٣"])
def test_feature_card_names_the_valid_range_for_an_invalid_feature_link(atlas_db, value):
    tid = atlas_db["transcoders"][1]
    at = run("card", transcoder=tid, feature=value)
    warnings = shown(at.warning)
    assert len(warnings) == 1 and f"valid features are the whole numbers 0 to {D_SAE - 1}" in warnings[0]
    assert f"The link's feature, {value}, is not a feature of" in warnings[0]
    assert "atlas-card-title" not in html(at)  # no silently different card
    # picking a feature in the widgets then shows it, and the link follows
    at.number_input(key="card_feature").set_value(5).run()
    assert "L1 #5 <span" in html(at) and at.query_params["feature"] in ("5", ["5"])


@pytest.mark.parametrize(
    "hostile",
    [
        "[click me](https://evil.example/)",
        "![p](http://127.0.0.1:9/pixel.png)",
        "<img src=http://127.0.0.1:9/x.png>",
        "**bold** `code` $x^2$ :red[red] https://evil.example",
    ],
)
def test_hostile_deep_link_values_are_shown_as_text(atlas_db, hostile):
    for params in ({"transcoder": hostile}, {"transcoder": atlas_db["transcoders"][0], "feature": hostile}):
        at = run("card", **params)
        assert len(at.warning) == 1
        raw = at.warning[0].value
        # no markdown or HTML syntax survives: only entities, which CommonMark shows as the literal text
        for syntax in ("](", "<img", "**", "`", "$", "https://", ":red["):
            assert syntax not in raw, (syntax, raw)
        assert hostile in shown(at.warning)[0]


def test_feature_card_widgets_update_the_url(atlas_db):
    at = run("card")
    at.number_input(key="card_feature").set_value(5).run()
    assert not at.exception
    assert at.query_params["feature"] == ["5"] or at.query_params["feature"] == "5"
    assert "feature 5 of layer 0" in html(at)


def figure(at: AppTest) -> dict:
    """The Plotly figure the page sent (its JSON spec)."""
    import json

    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def points(fig: dict) -> dict[str, dict]:
    """node id -> {trace name, hover, text} of every node drawn."""
    out = {}
    for trace in fig["data"]:
        for i, node_id in enumerate(trace.get("customdata") or []):
            out[node_id] = {
                "trace": trace["name"],
                "hover": trace["hovertext"][i],
                "text": (trace.get("text") or [""] * (i + 1))[i],
                "symbol": trace["marker"]["symbol"],
            }
    return out


def test_circuits_page_draws_graph_with_legend_hover_and_ranks_paths(atlas_db):
    at = run("circuits")
    page = html(at)
    fig = figure(at)
    drawn = points(fig)
    assert set(drawn) == {"e4", "f0", "f1", "err", "target"}
    # one legend entry per kind; errors are crosses, features circles
    assert drawn["err"]["trace"].startswith("error") and drawn["err"]["symbol"] == "x"
    assert drawn["f0"]["symbol"] == "circle" and drawn["target"]["symbol"] == "star"
    assert fig["layout"]["width"] == 1400 and fig["layout"]["dragmode"] == "pan"
    # hover: label, value and influence; hostile label text is escaped, never markup
    assert "value 2 · influence 0.6" in drawn["f0"]["hover"]
    assert "&lt;script&gt;" in drawn["f0"]["hover"]
    assert "<script" not in json.dumps(fig) and "<img" not in json.dumps(fig)
    # token positions along the x axis, escaped (position 5 is the hostile image token)
    assert html_lib.escape(IMG) in fig["layout"]["xaxis"]["ticktext"]
    assert "Replacement score" in page
    # which method built it, in the graph picker and above the graph
    assert "every direct effect among the active features" in page
    assert at.selectbox(key="graph").format_func(atlas_db["graph"]).endswith("· exact")
    # faithfulness per setting from graph_faithfulness, in the ladder's order (replacement model first)
    shown = at.dataframe[0].value
    assert list(shown["setting"]) == ["replacement_model", "attention_frozen", "nothing_frozen"]
    assert list(shown["sign_agreement"]) == [1.0, 1.0, 0.5]
    assert_no_markup_from_tokens(page)
    # path attributions by hand (fixture_db; interp.attribution's rule: an edge's weight times the share of
    # each feature's activation it explains): f1->t 2.4; f0->f1->t 2.4*1.0/1.5; e4->f0->f1->t 1.6*2.0/2.0;
    # e4->f1->t 2.4*0.5/1.5; err->t 0.6
    items = page[page.index("atlas-paths") :].split("<li>")[1:]
    assert [float(i.split("<code>")[1].split("</code>")[0]) for i in items] == [2.4, 1.6, 1.6, 0.8, 0.6]
    assert items[0].count("&rarr;") == 1 and items[2].count("&rarr;") == 3 and "error" not in items[1]
    for tid in atlas_db["transcoders"]:
        assert esc(card_url(tid, HOSTILE_FEATURE)) in page


def test_live_page_shades_the_text_by_each_chosen_feature_without_bos(atlas_db, tiny_model):
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
    # independent recomputation of every feature of layer 1 on every token
    tid = atlas_db["transcoders"][1]
    tc = Transcoder.load(layout.transcoder_dir(tid))
    store = {}

    def keep(x, hook):
        store["x"] = x.clone()

    tiny_model.blocks[1].ln2.hook_normalized.add_hook(keep)
    with torch.no_grad():
        tiny_model(tiny_model.to_tokens(text))
    tiny_model.reset_hooks()
    z = tc.encode(store["x"][0])  # [pos, d_sae], BOS first
    # the text block: one token per character, BOS left out; hover names the top feature per layer
    block = page[page.index("atlas-live-text") :].split("</div></div>")[0]
    assert block.count("atlas-tok") == len(text) and "atlas-bos" not in block
    last = html_lib.unescape(block.split('class="atlas-tok"')[-1])
    assert f"L1 #{int(z[-1].argmax())} feature {int(z[-1].argmax())} of layer 1 {z[-1].max():.2f}" in last
    # the chosen features default to the 3 strongest on the text (BOS left out); each shades every token
    picked = at.multiselect(key="live_features").value
    assert len(picked) == 3
    sections = page.split("atlas-live-feature")[1:]
    assert len(sections) == 3
    for (t, _layer, f), section in zip(picked, sections):
        assert esc(card_url(t, f)) in section and section.count("atlas-tok") == len(text)
        if t == tid:
            values = [float(v) for v in __import__("re").findall(r'title="([-\d.]+)"', section)]
            assert values == pytest.approx(z[1:, f].tolist(), abs=1e-3)
    best = max(float(z[1:].max()), 0.0)
    assert any(t == tid for t, _, _ in picked) or best < max(
        float(v) for v in __import__("re").findall(r"max ([\d.]+)", page)
    )


def test_sql_console_runs_examples_with_parameters_and_limits_rows(atlas_db):
    at = run("sql")
    assert list(at.dataframe[0].value.columns)[:2] == ["transcoder_id", "feature"]  # first example ran
    at.selectbox(key="sql_example").set_value("feature_health_by_layer").run()
    health = at.dataframe[0].value
    assert list(health["layer"]) == [0, 1] and list(health["n_features"]) == [D_SAE, D_SAE]
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
    assert [e.value for e in at.error] and message in shown(at.error)[0]
    assert len(at.dataframe) == 0


def test_sql_console_error_echoing_the_query_is_plain_text(atlas_db):
    at = run("sql")
    at.text_area(key="sql").input("SELECT * FROM [click](https://evil.example/)").run()
    raw = at.error[0].value
    assert (
        "](" not in raw and "https://" not in raw and "[click](https://evil.example/)" in shown(at.error)[0]
    )


def test_sql_examples_open_with_parameters_drawn_from_the_atlas(atlas_db):
    at = run("sql")  # the first example: the fixture has layers 0 and 1, not the old default 5
    assert at.text_input(key="sql_param_features_by_density_and_token_layer").value in ("0", "1")
    assert len(at.dataframe[0].value) > 0
    at.selectbox(key="sql_example").set_value("strongest_examples_of_feature").run()
    assert len(at.dataframe[0].value) > 0


@pytest.mark.parametrize("page", [p for p in PAGES if p != "live"])
def test_a_failing_storage_call_shows_one_clear_line_and_logs_the_traceback(
    atlas_db, page, monkeypatch, caplog
):
    from storage import queries, sql_console

    def broken(*args, **kwargs):
        raise RuntimeError("boom at /srv/secret/path.py line 1\nTraceback (most recent call last)")

    for name in ("table_counts", "search_features", "feature_card", "graphs"):
        monkeypatch.setattr(queries, name, broken)
    monkeypatch.setattr(sql_console, "run_console", broken)
    at = run(page)
    # one line, no message (it may name server paths), no traceback
    assert [e.value for e in at.error] == [
        "This page failed (RuntimeError). The details are in the server log."
    ]
    assert not at.exception
    assert any("Traceback" in r.exc_text for r in caplog.records if r.exc_text)


def test_streamlit_config_hides_error_details_and_usage_statistics():
    import tomllib

    config = tomllib.loads((APP.parent / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"]["address"] == "127.0.0.1"


@pytest.mark.slow
def test_live_page_runs_the_embedded_model_by_name(real_data, atlas_home, tmp_path):
    """The real SmolLM2 found by its name under $ATLAS_HOME/models (as `make atlas` leaves it), real hooks."""
    import torch

    from interp.model import load_model
    from interp.transcoder import Transcoder
    from storage import layout
    from tests.app import fixture_db

    converted = Path(real_data["models"]) / "smollm2-135m"
    Path(layout.models_dir()).mkdir(parents=True)
    (Path(layout.models_dir()) / "smollm2-135m").symlink_to(converted)
    ids = fixture_db.build(str(converted), d_model=576, model="smollm2-135m")
    at = AppTest.from_file(str(PAGES["live"]), default_timeout=600)
    at.run()
    at.slider(key="live_k").set_value(1).run()
    text = " The President said"
    at.text_area(key="live_text").input(text).run()
    assert not at.exception, at.exception
    page = html(at)
    block = page[page.index("atlas-live-text") :].split("</div></div>")[0]
    model = load_model(str(converted), device="cpu")
    tokens = model.to_tokens(text)
    assert block.count("atlas-tok") == tokens.shape[1] - 1  # BOS left out
    store = {}

    def keep(x, hook):
        store["x"] = x.clone()

    model.blocks[1].ln2.hook_normalized.add_hook(keep)
    with torch.no_grad():
        model(tokens)
    tid = ids["transcoders"][1]
    z = Transcoder.load(layout.transcoder_dir(tid)).encode(store["x"][0, -1])
    last = html_lib.unescape(block.split('class="atlas-tok"')[-1]).replace(WORD_JOINER, "")
    assert f"L1 #{int(z.argmax())} " in last and f"{z.max():.2f}" in last
