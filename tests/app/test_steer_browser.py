"""The Steer page end to end in headless Chromium (streamlit run on localhost, the fixture atlas): a shared link
with edits opens both generations side by side; a new prompt typed into the page reruns both."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from tests.app.fixture_db import HOSTILE_FEATURE
from tests.app.test_browser import CHROMIUM, CHROMIUM_ARGS, Watch, _require_chromium, _settle, server  # noqa: F401


@pytest.mark.browser
def test_steer_page_shows_both_generations_from_a_shared_link(server, atlas_db, tmp_path):  # noqa: F811
    _require_chromium()
    from playwright.sync_api import sync_playwright

    edits = f"L1:{HOSTILE_FEATURE}:add:40,L0:5:zero"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        watch = Watch(page, server)
        page.goto(f"{server}/Steer?edits={quote(edits, safe='')}&prompt={quote('the cat', safe='')}")
        page.wait_for_selector(".atlas-steer-edited .atlas-gen", timeout=180_000)
        page.wait_for_selector("table.atlas-steer-effects td", timeout=60_000)
        _settle(page)
        plain = page.inner_text(".atlas-steer-plain")
        steered = page.inner_text(".atlas-steer-edited")
        assert plain.startswith("the cat") and steered.startswith("the cat")
        assert len(plain) > len("the cat") and len(steered) > len("the cat")  # both continued
        assert page.locator(".atlas-steer-plain .atlas-gen").count() == 20
        assert page.locator("table.atlas-steer-moved tr").count() == 11  # header + 10 tokens
        assert page.locator("table.atlas-steer-effects tr").count() == 4  # header, 2 edits, both together
        assert page.locator("[data-testid='stException']").count() == 0
        # the edits and the prompt stay in the URL: the result can be shared
        assert "edits=" in page.url and re.search(r"L1(%3A|:)3(%3A|:)add", page.url)
        page.screenshot(path=str(tmp_path / "steer.png"), full_page=True)
        # a new prompt reruns both generations
        box = page.locator("textarea").first
        box.fill("a dog <b>")
        box.press("Control+Enter")
        page.wait_for_function(
            "document.querySelector('.atlas-steer-plain')?.innerText.startsWith('a dog <b>')", timeout=120_000
        )
        _settle(page)
        assert page.inner_text(".atlas-steer-edited").startswith("a dog <b>")
        assert page.locator(".atlas-steer-plain b").count() == 0  # the typed tag is text
        watch.assert_clean("steer")
        browser.close()
    assert (tmp_path / "steer.png").stat().st_size > 10_000
