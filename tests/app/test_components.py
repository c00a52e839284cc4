"""app/components.py: escaping round-trips, token shading, visible whitespace."""

from __future__ import annotations

import html
import re

import pytest

from app.components import card_url, esc, shaded_tokens, show_token
from tests.app.fixture_db import IMG, SCRIPT

HOSTILE = [
    SCRIPT,
    IMG,
    '" onmouseover="alert(1)',
    "[x](javascript:alert(1))",
    "$x^2$",
    "**b** _i_ `c`",
    "&amp;",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_esc_leaves_no_markup_and_decodes_back_to_the_text(text):
    out = esc(text)
    assert not re.search(r"[<>\"'`*_\[\]()$]", out)
    assert html.unescape(out) == text


def test_shaded_tokens_scale_activation_to_opacity_and_keep_values_on_hover():
    out = shaded_tokens([SCRIPT, "a", " "], [2.0, 1.0, -1.0], scale=2.0, highlight=0)
    assert out.count("atlas-tok") == 3 and "<script" not in out
    assert re.findall(r"rgba\(255,120,0,([\d.]+)\)", out) == ["1.00", "0.50", "0.00"]
    assert re.findall(r'title="([^"]+)"', out) == ["2.000", "1.000", "-1.000"]
    assert "\u2423" in out and out.count("border-bottom") == 1


def test_show_token_and_card_url():
    assert [show_token(t) for t in ["\n", "", " ", " the"]] == ["\u21b5", "\u00b7", "\u2423", " the"]
    assert card_url("m/L0/relu-16", 5) == "Feature_card?transcoder=m%2FL0%2Frelu-16&feature=5"
