"""The app keeps serving while Dagster materializes into the same database, and while the SQL console runs a long
query in the same process: zero failed page loads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
from streamlit.testing.v1 import AppTest

from storage import sql_console
from storage.db import readers
from tests.app.fixture_db import HOSTILE_FEATURE
from tests.app.materialize_loop import N_ROWS
from tests.app.test_pages import PAGES

ROOT = Path(__file__).resolve().parents[2]


def _load_failures(page: str, params: dict[str, str]) -> list[tuple]:
    """Load one page with `params` as query parameters: [] if it rendered content, else what it showed instead."""
    at = AppTest.from_file(str(PAGES[page]), default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    if at.exception or at.error or not (at.markdown or at.dataframe):
        return [(page, [str(e) for e in at.exception], [e.value for e in [*at.error, *at.info]])]
    return []


def test_pages_load_without_failure_during_dagster_materializations(atlas_db, tmp_path, monkeypatch):
    # count the connection attempts that found the file locked (storage.db retries them)
    real_connect, locked = duckdb.connect, []

    def counting_connect(*args, **kwargs):
        try:
            return real_connect(*args, **kwargs)
        except duckdb.IOException as e:
            locked.append(str(e))
            raise

    monkeypatch.setattr(duckdb, "connect", counting_connect)
    stop, count = tmp_path / "stop", tmp_path / "count"
    env = os.environ | {"ATLAS_HOME": atlas_db["home"]}
    with open(tmp_path / "writer.log", "w") as log:
        cmd = [sys.executable, "-m", "tests.app.materialize_loop", str(stop), str(count)]
        writer = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=log)
    deadline = time.monotonic() + 300
    while not count.exists() and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the first materialization pays Dagster's start-up; pages load once writes overlap
    tid = atlas_db["transcoders"][1]
    loads, failures = 0, []
    try:
        while (loads < 10 or int(count.read_text()) < 3) and time.monotonic() < deadline:
            assert writer.poll() is None, (tmp_path / "writer.log").read_text()[-3000:]
            for page, params in (
                ("home", {}),
                ("card", {"transcoder": tid, "feature": str(HOSTILE_FEATURE)}),
            ):
                loads += 1
                failures += _load_failures(page, params)
    finally:
        stop.touch()
        writer.wait(timeout=120)
    runs = int(count.read_text())
    assert failures == [], failures
    assert runs >= 3 and loads >= 10, (runs, loads)
    assert writer.returncode == 0, (tmp_path / "writer.log").read_text()[-3000:]
    assert readers.query("SELECT count(*) AS n FROM vocab WHERE model = 'writer'")["n"][0] == N_ROWS
    print(
        f"{loads} page loads, {runs} materializations, {len(locked)} connection attempts found the file locked"
    )


CONSOLE_TIMEOUT_S = 60
LONG_QUERY = (
    "SELECT count(*) AS n FROM range(3000000000) t(i) WHERE hash(i) % 7 = 3"  # minutes, unless stopped
)


def test_every_page_loads_while_a_long_console_query_runs(atlas_db, monkeypatch):
    """The console's sandboxed connection and the pages' read connections live in one process; DuckDB once
    refused the second with other settings (ConnectionException) and every page showed a traceback. The query
    runs until the console's own timeout stops it; each other page loads (twice) meanwhile, through the public
    storage API, and the console query itself must end in its timeout, not a connection error."""
    opened, outcome = threading.Event(), {}
    real_limits = sql_console._check_console_limits

    def limits_then_signal(con):
        real_limits(con)
        opened.set()  # the console's connection is open and about to run the query

    monkeypatch.setattr(sql_console, "_check_console_limits", limits_then_signal)

    def console() -> None:
        try:
            # 60 s: twelve page loads take ~15 s on an idle 2-core machine and over 25 s while a build runs
            outcome["rows"] = sql_console.run_console(LONG_QUERY, timeout_s=CONSOLE_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            outcome["error"] = e

    thread = threading.Thread(target=console, daemon=True)
    thread.start()
    assert opened.wait(60), outcome
    tid = atlas_db["transcoders"][1]
    pages = [
        ("home", {}),
        ("features", {}),
        ("card", {"transcoder": tid, "feature": str(HOSTILE_FEATURE)}),
        ("circuits", {}),
        ("live", {}),
        ("sql", {}),
    ]
    loads, failures = 0, []
    for _ in range(2):
        for page, params in pages:
            loads += 1
            failures += _load_failures(page, params)
    still_running = thread.is_alive()
    thread.join(CONSOLE_TIMEOUT_S + 60)
    assert failures == [], failures
    assert still_running, "the console query ended before the pages loaded; make LONG_QUERY longer"
    # the query ends in its timeout (or, on a fast machine, its result), never in a connection error
    if "error" in outcome:
        assert isinstance(outcome["error"], sql_console.SqlRejected), outcome
        assert f"longer than {CONSOLE_TIMEOUT_S} s" in str(outcome["error"]), outcome
    else:
        assert outcome["rows"][0]["n"][0] > 0
    assert loads == 2 * len(pages)
