"""The app keeps serving while Dagster materializes into the same database: zero failed page loads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
from streamlit.testing.v1 import AppTest

from storage import db
from tests.app.fixture_db import HOSTILE_FEATURE
from tests.app.materialize_loop import N_ROWS
from tests.app.test_pages import PAGES

ROOT = Path(__file__).resolve().parents[2]


def test_pages_load_without_failure_during_dagster_materializations(atlas_db, tmp_path, monkeypatch):
    # count the connection attempts that found the file locked (storage.db retries them)
    real_connect, locked = duckdb.connect, []

    def counting_connect(*args, **kwargs):
        try:
            return real_connect(*args, **kwargs)
        except duckdb.IOException as e:
            locked.append(str(e))
            raise

    monkeypatch.setattr(db.duckdb, "connect", counting_connect)
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
                at = AppTest.from_file(str(PAGES[page]), default_timeout=120)
                for k, v in params.items():
                    at.query_params[k] = v
                at.run()
                loads += 1
                if at.exception or at.error or not at.markdown:
                    failures.append((page, [str(e) for e in at.exception], [e.value for e in at.error]))
    finally:
        stop.touch()
        writer.wait(timeout=120)
    runs = int(count.read_text())
    assert failures == [], failures
    assert runs >= 3 and loads >= 10, (runs, loads)
    assert writer.returncode == 0, (tmp_path / "writer.log").read_text()[-3000:]
    assert db.query("SELECT count(*) AS n FROM vocab WHERE model = 'writer'")["n"][0] == N_ROWS
    print(
        f"{loads} page loads, {runs} materializations, {len(locked)} connection attempts found the file locked"
    )
