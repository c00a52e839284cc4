"""The app in a real browser: `streamlit run` on localhost, driven by headless Debian Chromium through Playwright.

Waits for CSS selectors that only exist once the page content rendered (a plain `--screenshot` fires before
Streamlit's websocket delivers anything). One test visits every page, fails on any browser console error, page
error or Streamlit exception element, and saves a screenshot of each page (into the test's tmp dir, and into
$ATLAS_SCREENSHOT_DIR when set); one feeds hostile deep links; one times the feature card.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.components import card_url
from storage import queries
from tests.app.fixture_db import DEAD_FEATURE, FIRST_FEATURE, HOSTILE_FEATURE, IMG, SCRIPT

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not become healthy at {url} in {timeout:.0f} s")


@pytest.fixture
def server(atlas_db, tmp_path):
    port = _free_port()
    env = os.environ | {"ATLAS_HOME": atlas_db["home"], "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "Home.py")]
    cmd += ["--server.address", "127.0.0.1", "--server.headless", "true", "--server.port", str(port)]
    with open(tmp_path / "streamlit.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _require_chromium() -> None:
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver (.ci/run does this)."
        )


class Watch:
    """Everything a page did that a user should never see: console errors, uncaught page errors, dialogs (a
    token string that ran script), and requests that left 127.0.0.1:<app port>."""

    def __init__(self, page, server: str):
        self.console: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.outside: list[str] = []
        self.failed: list[str] = []
        page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        page.on("response", lambda r: self.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on(
            "request",
            lambda r: None if r.url.startswith((server, "data:", "blob:")) else self.outside.append(r.url),
        )

    def assert_clean(self, where: str) -> None:
        # Streamlit's frontend, loaded at /<Page>, first probes /<Page>/_stcore/{health,host-config} to find its
        # base path (404), then uses /_stcore: the only failed loads allowed, one console line each.
        probes = [f for f in self.failed if re.fullmatch(r"404 \S+/[^/]+/_stcore/(health|host-config)", f)]
        not_found = [c for c in self.console if c.startswith("Failed to load resource") and "404" in c]
        assert len(not_found) <= len(probes) and set(self.failed) == set(probes), (where, self.failed)
        other = [c for c in self.console if c not in not_found]
        assert other == [], (where, other)
        assert self.errors == [] and self.dialogs == [] and self.outside == [], (
            where,
            self.errors,
            self.dialogs,
            self.outside,
        )


def _settle(page) -> None:
    """Wait until Streamlit has finished the script run (its status widget gone) and the page is quiet."""
    page.wait_for_function(
        "!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000, polling=200
    )
    page.wait_for_timeout(500)


def _shots_dir(tmp_path: Path) -> list[Path]:
    dirs = [tmp_path / "screenshots"]
    if os.environ.get("ATLAS_SCREENSHOT_DIR"):
        dirs.append(Path(os.environ["ATLAS_SCREENSHOT_DIR"]))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


@pytest.mark.browser
def test_every_page_renders_without_errors_and_is_screenshotted(server, atlas_db, tmp_path):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    t0, t1 = atlas_db["transcoders"]
    pages = [  # (name, path, a selector that exists once the page's content rendered)
        ("home", "", "[data-testid='stDataFrame']"),
        ("features", "Features", "[data-testid='stDataFrame'] [data-testid='data-grid-canvas']"),
        ("feature_card", card_url(t1, HOSTILE_FEATURE), "svg.atlas-hist rect"),
        ("feature_card_artifact", card_url(t0, FIRST_FEATURE), ".atlas-example .atlas-bos"),
        ("feature_card_dead", card_url(t0, DEAD_FEATURE), "[data-testid='stAlert']"),
        ("circuits", "Circuits", "ol.atlas-paths li"),
        ("live", "Live", ".atlas-live-feature .atlas-tok"),
        ("sql", "SQL", "[data-testid='stDataFrame'] [data-testid='data-grid-canvas']"),
    ]
    dirs = _shots_dir(tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        watch = Watch(page, server)
        for name, path, selector in pages:
            page.goto(f"{server}/{path}")
            page.wait_for_selector(selector, timeout=180_000)
            _settle(page)
            assert page.locator("[data-testid='stException']").count() == 0, name
            body = page.inner_text("body")
            assert "Traceback" not in body, name
            # escaped text is decoded exactly once: no entity is left visible (double escaping)
            assert not re.search(r"&#\d+;|&lt;|&gt;|&amp;|&quot;", body), (name, body[:2000])
            for d in dirs:
                page.screenshot(path=str(d / f"{name}.png"), full_page=True)
            watch.assert_clean(name)
        browser.close()
    for name, _, _ in pages:
        assert (dirs[0] / f"{name}.png").stat().st_size > 10_000, name


@pytest.mark.browser
def test_hostile_deep_links_show_as_text_and_fetch_nothing(server, atlas_db, tmp_path):
    _require_chromium()
    from urllib.parse import quote

    from playwright.sync_api import sync_playwright

    t0 = atlas_db["transcoders"][0]
    link, pixel = "[click me](https://evil.example/)", "![p](http://127.0.0.1:9/pixel.png)"
    cases = [
        {"transcoder": link},
        {"transcoder": pixel},
        {"transcoder": t0, "feature": pixel},
        {"transcoder": t0, "feature": "<img src=http://127.0.0.1:9/x.png>"},
        {"transcoder": t0, "feature": "-1"},
    ]
    dirs = _shots_dir(tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        watch = Watch(page, server)
        for i, params in enumerate(cases):
            query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
            page.goto(f"{server}/Feature_card?{query}")
            alert = page.wait_for_selector("[data-testid='stAlert']", timeout=120_000)
            _settle(page)
            text = alert.inner_text().replace("\u2060", "")  # the word joiners that break autolinks
            shown = params.get("feature", params["transcoder"])
            assert shown in text, (shown, text)  # the literal text, markup and all
            assert page.locator("[data-testid='stAlert'] a, [data-testid='stAlert'] img").count() == 0, (
                alert.inner_html()
            )
            assert page.locator("a[href*='evil.example'], img[src*='127.0.0.1:9']").count() == 0
            if "feature" in params:
                assert "valid features are the whole numbers 0 to 15" in text
            assert page.locator("[data-testid='stException']").count() == 0
            for d in dirs:
                page.screenshot(path=str(d / f"hostile_link_{i}.png"), full_page=True)
            watch.assert_clean(str(params))
        browser.close()


@pytest.mark.browser
def test_card_and_circuit_pages_render_in_headless_chromium(server, atlas_db, tmp_path):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    tid = atlas_db["transcoders"][1]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

        # cold: first page load of a fresh server; warm: a second card (a full page load all the same)
        timings = {}
        for name, feature in (("cold", 0), ("warm", HOSTILE_FEATURE)):
            t0 = time.perf_counter()
            page.goto(f"{server}/{card_url(tid, feature)}")
            page.wait_for_selector(".atlas-example .atlas-tok", timeout=120_000)
            timings[name] = time.perf_counter() - t0
        page.wait_for_selector("ul.atlas-links a", timeout=30_000)
        page.wait_for_selector("svg.atlas-hist rect", timeout=30_000)
        page.wait_for_selector("table.atlas-fx-deembed td", timeout=30_000)
        page.screenshot(path=str(tmp_path / "feature_card.png"), full_page=True)
        server_time = page.inner_text("text=Card rendered")
        # in-app: the feature's + button reruns the page over the open websocket (no reload)
        t0 = time.perf_counter()
        page.click("[data-testid='stNumberInputStepUp']")
        page.wait_for_function(
            "document.querySelector('h2.atlas-card-title')?.innerText.startsWith('L1 #4')", timeout=60_000
        )
        timings["next_feature"] = time.perf_counter() - t0
        log.warning(
            "feature card in the browser until shaded examples show: page load cold %.2f s, warm %.2f s; "
            "next feature in the open page %.2f s; server: %s",
            timings["cold"],
            timings["warm"],
            timings["next_feature"],
            server_time,
        )
        (tmp_path / "timings.txt").write_text(
            "".join(f"feature_card_{k}_s {v:.3f}\n" for k, v in timings.items())
        )

        # the hostile tokens are visible as text and never became elements
        page.goto(f"{server}/{card_url(tid, HOSTILE_FEATURE)}")
        page.wait_for_selector(".atlas-example .atlas-tok", timeout=120_000)
        assert SCRIPT in page.inner_text(".atlas-example")
        assert IMG in page.inner_text("table.atlas-fx-deembed")
        assert page.locator(".atlas-example script, .atlas-example img, img[src='x']").count() == 0
        assert "L1 #3" in page.inner_text("h2.atlas-card-title")

        page.goto(f"{server}/Circuits")
        points = ".js-plotly-plot .scatterlayer .trace path.point"
        page.wait_for_selector(points, timeout=120_000)
        page.wait_for_selector("ol.atlas-paths li", timeout=30_000)
        page.screenshot(path=str(tmp_path / "circuits.png"), full_page=True)
        assert page.locator(points).count() == 5  # every node of the fixture graph, one marker each
        assert page.locator("ol.atlas-paths li").count() == 5
        legend = page.locator(".js-plotly-plot .legend").text_content()
        assert "feature" in legend and "error" in legend
        # hover names the node with its value and influence
        names = page.locator(".js-plotly-plot .scatterlayer .trace").evaluate_all(
            "els => els.map(e => e.__data__[0].trace.name)"
        )
        features = page.locator(".js-plotly-plot .scatterlayer .trace").nth(
            next(i for i, n in enumerate(names) if n.startswith("feature"))
        )
        box = features.locator("path.point").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_selector(".hoverlayer .hovertext", timeout=10_000)
        assert "influence" in page.locator(".hoverlayer").text_content()
        # clicking a feature node opens its card (the layer-0 node is the first feature)
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_selector(".atlas-example .atlas-tok", timeout=120_000)
        assert "L0 #3" in page.inner_text("h2.atlas-card-title")
        # the feature browser: selecting a row (its marker at the grid's left edge) opens that feature's card
        page.goto(f"{server}/Features")
        grid = page.wait_for_selector(
            "[data-testid='stDataFrame'] [data-testid='data-grid-canvas']", timeout=120_000
        )
        box = grid.bounding_box()
        page.mouse.click(box["x"] + 14, box["y"] + 35 + 18)  # header row is 35 px; first data row below it
        page.wait_for_selector(".atlas-example .atlas-tok", timeout=120_000)
        first = queries.search_features().row(0, named=True)  # the default: live features by contexts
        assert page.inner_text("h2.atlas-card-title").startswith(f"L{first['layer']} #{first['feature']}")
        assert dialogs == [], f"a token string executed script: {dialogs}"
        browser.close()
    for name in ("feature_card.png", "circuits.png"):
        assert (tmp_path / name).stat().st_size > 10_000
