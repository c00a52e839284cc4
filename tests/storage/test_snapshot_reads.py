"""Readers never wait for a writer (docs/storage.md, "Snapshots"): app pages load in a loop while another process
writes 1.77M `feature_edges` rows N_WRITES times (tests/storage/edges_writer.py), each write replacing the last as
a re-materialization does. Zero failures, no page stalled behind the writer, and loads really overlap the writes
(they happen while the writer holds the lock)."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from storage.db import readers
from tests.app import fixture_db
from tests.app.fixture_db import HOSTILE_FEATURE
from tests.app.test_pages import PAGES

ROOT = Path(__file__).resolve().parents[2]
# A reader that waited for each write would finish no load inside one (`during_write`); one that waited for the
# old 120 s lock timeout fails this bound. The 2 s page goal is a speed figure: printed above and measured by
# `make bench`, not asserted here, where the machine's load decides it (pages took up to 3.9 s while two other jobs
# shared the 2 cores).
PAGE_LIMIT_S = 10.0
# back-to-back writes of about 2 s each here, so that loads land inside them whatever the machine's speed
N_WRITES = 8


@pytest.fixture
def atlas_db(atlas_home, tiny_model_dir) -> dict:
    return fixture_db.build(tiny_model_dir) | {"home": atlas_home}


def _load(page: str, params: dict[str, str]) -> tuple[float, list]:
    at = AppTest.from_file(str(PAGES[page]), default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    t0 = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - t0
    bad = [str(e) for e in at.exception] + [e.value for e in at.error]
    if not at.markdown and not at.dataframe:
        bad.append("empty page")
    return seconds, bad


@pytest.mark.slow  # about 30 s: the fixture atlas, then pages loading while 8 writes run
def test_pages_stay_fast_while_feature_edges_are_rewritten(atlas_db, tmp_path):
    model, tid = atlas_db["model"], atlas_db["transcoders"][1]
    pages = {
        "home": {},
        "features": {},
        "card": {"transcoder": tid, "feature": str(HOSTILE_FEATURE)},
        "circuits": {},
        "sql": {},
    }
    for page, params in pages.items():  # imports and Streamlit's first-run costs, before any timing
        assert _load(page, params)[1] == [], page
    stop, busy, out = tmp_path / "stop", tmp_path / "busy", tmp_path / "writer.log"
    cmd = [sys.executable, "-m", "tests.storage.edges_writer", model, str(stop), str(busy), str(N_WRITES)]
    env = os.environ | {"ATLAS_HOME": atlas_db["home"]}
    with open(out, "w") as log:
        writer = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    times: dict[str, list[float]] = {p: [] for p in pages}
    loads: list[tuple[float, str, bool]] = []  # (seconds, page, writer busy when it started)
    failures, during_write = [], 0
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline:
            if writer.poll() is not None:
                assert writer.returncode == 0, out.read_text()[-3000:]
                break
            for page, params in pages.items():
                writing = busy.exists()
                seconds, bad = _load(page, params)
                during_write += writing and busy.exists()  # the writer held the lock before and after
                times[page].append(seconds)
                loads.append((seconds, page, writing))
                if bad:
                    failures.append((page, bad))
    finally:
        stop.touch()
        writer.wait(timeout=300)
    log_text = out.read_text()
    print(f"\n{log_text.strip()}")
    for page, ts in times.items():
        print(f"{page:9s} {len(ts):3d} loads  median {statistics.median(ts):.3f} s  max {max(ts):.3f} s")
    print(f"{during_write} loads ran entirely inside a write unit holding the writer lock")
    print(
        "slowest:", ", ".join(f"{p} {t:.2f} s{' (writing)' if w else ''}" for t, p, w in sorted(loads)[-5:])
    )
    assert failures == [], failures
    assert log_text.count("write ") == N_WRITES, log_text[-3000:]
    assert during_write >= 5
    slowest = max((max(ts), page) for page, ts in times.items())
    assert slowest[0] < PAGE_LIMIT_S, f"{slowest[1]} took {slowest[0]:.2f} s"
    assert readers.query("SELECT count(*) AS n FROM feature_edges")["n"][0] == 1_769_472
    shutil.rmtree(atlas_db["home"])  # the working copy and its snapshots, not kept with pytest's tmp dirs
