"""app/components.py: escaping round-trips, token shading, visible whitespace."""

from __future__ import annotations

import html
import re

import pytest

from app.components import (
    WORD_JOINER,
    bin_ratio,
    card_url,
    esc,
    friendly_error,
    histogram_svg,
    parse_feature,
    shaded_tokens,
    show_token,
)
from tests.app.fixture_db import IMG, SCRIPT

HOSTILE = [
    SCRIPT,
    IMG,
    '" onmouseover="alert(1)',
    "[x](javascript:alert(1))",
    "$x^2$",
    "**b** _i_ `c`",
    "&amp;",
    "see https://evil.example or www.evil.example, mail a@evil.example",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_esc_leaves_no_markup_and_decodes_back_to_the_text(text):
    out = esc(text)
    assert not re.search(r"[<>\"'`*_\[\]()$]", out)
    assert html.unescape(out).replace(WORD_JOINER, "") == text
    assert not re.search(r"https?://|www\.|@[a-z]", html.unescape(out))  # nothing left to autolink


def test_shaded_tokens_scale_activation_to_opacity_and_keep_values_on_hover():
    out = shaded_tokens([SCRIPT, "a", " "], [2.0, 1.0, -1.0], scale=2.0, highlight=0)
    assert out.count("atlas-tok") == 3 and "<script" not in out
    assert re.findall(r"rgba\(255,120,0,([\d.]+)\)", out) == ["1.00", "0.50", "0.00"]
    assert re.findall(r'title="([^"]+)"', out) == ["2.000", "1.000", "-1.000"]
    assert "\u2423" in out and out.count("border-bottom") == 1


def test_show_token_and_card_url():
    assert [show_token(t) for t in ["\n", "", " ", " the"]] == ["\u21b5", "\u00b7", "\u2423", " the"]
    assert card_url("m/L0/relu-16", 5) == "Feature_card?transcoder=m%2FL0%2Frelu-16&feature=5"


def test_shaded_tokens_show_where_the_context_starts():
    start = shaded_tokens(["<s>", "a", "b"], [0.0, 1.0, 0.5], scale=1.0, highlight=1, window_start=0)
    assert (
        start.count('class="atlas-bos"') == 1 and start.count("atlas-tok") == 2 and "atlas-cont" not in start
    )
    inside = shaded_tokens(["x", "a"], [0.0, 1.0], scale=1.0, window_start=7)
    assert "atlas-cont" in inside and "position 7" in inside and "atlas-bos" not in inside
    assert "atlas-cont" not in shaded_tokens(["x"], [1.0], scale=1.0)  # position unknown: no marker
    titled = shaded_tokens(["a"], [1.0], scale=1.0, titles=["L0 #1 <b>x</b> 1.00"])
    assert "<b>" not in titled and "&lt;b&gt;" in titled


def test_histogram_has_axes_counts_and_names_its_log_bins():
    edges, counts = [0.3, 0.5, 1.0, 2.0, 4.0, 7.0], [4, 10, 25, 3, 1]
    svg = histogram_svg(edges, counts)
    assert bin_ratio(edges) == pytest.approx(2.0) and "log-spaced bins, each x2.00 wider" in svg
    assert ">25</text>" in svg and ">0</text>" in svg and ">tokens</text>" in svg
    assert ">0.3</text>" in svg and ">7</text>" in svg  # outer edges: the exact min and max activation
    assert re.findall(r"<title>([^<]+)</title>", svg)[2] == "1 to 2: 25 tokens"
    assert bin_ratio([0.0, 1.0, 2.0, 3.0, 4.0]) is None  # linear bins are not called log-spaced
    assert "log-spaced" not in histogram_svg([0.0, 1.0, 2.0, 3.0, 4.0], [1, 2, 3, 4])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0", 0), ("15", 15), (" 7 ", 7), ("16", None), ("-1", None), ("abc", None), ("3.5", None), ("", None)]
    + [(None, None), ("1e3", None), ("٣", None), ("+3", None)],
)
def test_parse_feature_accepts_only_whole_numbers_in_range(raw, expected):
    assert parse_feature(raw, 16) == expected


def test_friendly_error_is_one_escaped_line_without_a_traceback():
    import duckdb

    msg = friendly_error(duckdb.ConnectionException("Can't open [x](https://evil.example)\nline two"))
    assert "reload the page" in msg and "line two" not in msg and "](" not in msg
    assert "[x](https://evil.example)" in html.unescape(msg).replace(WORD_JOINER, "")


def test_friendly_error_passes_storage_db_messages_through():
    from storage.db import errors

    class Fake(RuntimeError):
        pass

    Fake.__module__ = errors.__name__  # as storage.db's own error classes
    assert friendly_error(Fake("The atlas file is not a DuckDB database; rebuild it.")) == esc(
        "The atlas file is not a DuckDB database; rebuild it."
    )
    assert (
        friendly_error(RuntimeError("/srv/x.py failed"))
        == "This page failed (RuntimeError). The details are in the server log."
    )
