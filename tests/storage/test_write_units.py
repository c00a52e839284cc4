"""One write unit per asset (docs/storage.md): a writer SIGKILLed at every point between writing new files and
removing old ones leaves readers on a consistent atlas, and the next publish leaves no orphan file.

The unit under test is `storage.transcoders.save_transcoder` (weights on disk + three tables). Version v of the
transcoder has weights seeded with v, config {"seed": v}, metric l0 = v and v curve rows, so a reader can tell
whether the rows and the files it sees belong to the same save.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
import torch

from interp.transcoder import Transcoder, TranscoderConfig
from storage import activations as act_store
from storage import artifacts, layout, snapshots
from storage import transcoders as tc_store
from storage.db import crash_points, errors, migrations, publishing, readers, row_writes
from tests.storage import atlas_files

ROOT = Path(__file__).resolve().parents[2]
TID = "toy/L1/relu-16"


def _tc(version: int) -> Transcoder:
    torch.manual_seed(version)
    cfg = TranscoderConfig(
        d_in=8, d_sae=16, d_out=8, architecture="relu", skip=False, model_name="toy", layer=1
    )
    return Transcoder(cfg)


def save_version(version: int) -> str:
    curve = pl.DataFrame({"step": list(range(version)), "tokens": list(range(version))})
    metrics = {"n_eval_tokens": 10, "l0": float(version), "gate_passed": True, "gate_reason": ""}
    return tc_store.save_transcoder(_tc(version), TID, {"seed": version}, 100, curve, metrics)


def visible_version() -> int:
    """The version readers see, after checking that rows and weights agree (AssertionError if they do not)."""
    row = tc_store.transcoder_row(TID)
    seed = row["config"]["seed"]
    l0 = readers.query("SELECT l0 FROM transcoder_metrics WHERE transcoder_id = ?", [TID])["l0"][0]
    n_curve = readers.query("SELECT count(*) n FROM training_curves WHERE transcoder_id = ?", [TID])["n"][0]
    assert (l0, n_curve) == (seed, seed), f"rows of different saves: config {seed}, l0 {l0}, curve {n_curve}"
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    loaded = tc_store.load_transcoder(TID)  # raises if the weights folder is missing or corrupt
    assert torch.equal(loaded(x), _tc(seed)(x)), f"weights at {row['weights_path']} are not version {seed}"
    return seed


def _killed_save(version: int, point: str) -> None:
    code = f"from tests.storage.test_write_units import save_version; save_version({version})"
    env = os.environ | {"ATLAS_TEST_CRASH_AT": point}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == -9, f"expected SIGKILL at {point}: rc {proc.returncode}\n{proc.stderr[-2000:]}"


# Which version readers see right after the kill, and after the next publish.
EXPECTED = {
    "files_written": (1, 1),
    "in_transaction": (1, 1),
    "committed": (1, 2),
    "checkpointed": (1, 2),
    "snapshot_copied": (1, 2),
    "published": (2, 2),
    "swept": (2, 2),
}


def test_every_crash_point_is_exercised():
    assert set(EXPECTED) == set(crash_points.CRASH_POINTS)


@pytest.mark.parametrize("point", list(EXPECTED))
def test_writer_killed_at_each_point_leaves_a_consistent_atlas(atlas_home, point):
    save_version(1)
    save_version(1)  # a re-save: the first folder is swept once no kept snapshot points to it
    _killed_save(2, point)
    before, after = EXPECTED[point]
    assert visible_version() == before
    for d in atlas_files.databases(atlas_home):
        assert atlas_files.dangling(d) == [], (
            d
        )  # no database, working copy included, points to a missing file
    publishing.publish()  # what the next writer does first thing after its own commit
    assert visible_version() == after
    assert atlas_files.orphans(atlas_home) == []
    save_version(3)  # and the atlas keeps working
    publishing.publish()
    assert visible_version() == 3
    assert atlas_files.orphans(atlas_home) == []
    folders = os.listdir(layout.transcoder_dir(TID))
    assert len(folders) <= 2, folders  # the current save and the one the previous snapshot may still point to


def test_the_consistency_check_catches_the_old_overwrite_in_place(atlas_home):
    """Before this issue, a save replaced the weights folder before its transaction: a kill in between left new
    weights beside old rows. Reproduce that state by hand and show visible_version() refuses it."""
    path = save_version(1)
    for name in os.listdir(path):
        os.remove(os.path.join(path, name))
    _tc(2).save(path)  # new weights where the committed rows point, rows still of version 1
    with pytest.raises(AssertionError, match="are not version 1"):
        visible_version()


def test_orphans_and_dangling_rows_are_detected(atlas_home):
    save_version(1)
    stray = Path(layout.transcoder_dir(TID)) / "v-stray"
    stray.mkdir()
    (stray / "cfg.json").write_text("{}")
    assert atlas_files.orphans(atlas_home) == [str(stray / "cfg.json")]
    weights = tc_store.transcoder_row(TID)["weights_path"]
    os.rename(weights, weights + "-moved")
    assert atlas_files.dangling(atlas_files.databases(atlas_home)[0]) == [os.path.abspath(weights)]


def test_sweep_keeps_claimed_files_and_removes_a_dead_writers(atlas_home):
    save_version(1)
    live = artifacts.claim(layout.new_version(layout.transcoder_dir(TID)))
    os.makedirs(live)
    Path(live, "cfg.json").write_text("{}")  # a save in progress in this process
    _killed_save(2, "files_written")  # a save whose writer died
    leftover = {str(Path(p).parent) for p in atlas_files.orphans(atlas_home) if "claims" not in p}
    assert len(leftover) == 2 and live in leftover, leftover  # ours and the dead writer's weights
    publishing.publish()
    left = [p for p in atlas_files.orphans(atlas_home) if "/claims/" not in p]
    assert left == [str(Path(live, "cfg.json"))]  # ours survives the sweep (its claim file too)
    artifacts.release(live)
    publishing.publish()
    assert atlas_files.orphans(atlas_home) == []


def test_failed_save_leaves_previous_version_and_no_files(atlas_home):
    save_version(1)
    with pytest.raises(ValueError, match="Unknown metric"):
        tc_store.save_transcoder(_tc(2), TID, {"seed": 2}, 1, pl.DataFrame(), {"bogus": 1.0})
    assert visible_version() == 1
    publishing.publish()
    assert atlas_files.orphans(atlas_home) == []


def test_readers_with_different_settings_share_no_instance(atlas_home):
    """The SQL console (sandboxed, limits) and a page (plain) connect at the same time in one process."""
    save_version(1)
    limits = {"memory_limit": "512MB", "threads": 1}
    with readers.reader(sandboxed=True, settings=limits) as console, readers.reader() as page:
        with readers.reader(sandboxed=True) as console2:
            assert console2.execute("SELECT count(*) FROM transcoders").fetchone() == (1,)
        assert console.execute("SELECT current_setting('threads')").fetchone() == (1,)
        assert page.execute("SELECT count(*) FROM transcoders").fetchone() == (1,)
        with page.cursor() as cur:  # cursors keep the atlas as their default catalog
            assert cur.execute("SELECT count(*) FROM transcoder_metrics").fetchone() == (1,)
        with pytest.raises(duckdb.InvalidInputException, match="locked"):
            console.execute("SET threads = 2")
        with pytest.raises(duckdb.PermissionException):
            console.execute("SELECT * FROM read_csv('/etc/passwd')")
        page.execute("SET threads = 2")  # the page's own instance is not locked
    # a notebook in this process holds the new snapshot with other settings: plain reads still work
    save_version(2)
    raw = duckdb.connect(str(snapshots.current(layout.db_path())), read_only=True, config={"threads": "1"})
    try:
        assert visible_version() == 2
    finally:
        raw.close()
    # ... and holds the working copy: a writer gets a clear storage.db error, not DuckDB's
    raw = duckdb.connect(layout.db_path(), read_only=True)
    try:
        with pytest.raises(errors.DatabaseConfigError, match="other settings"):
            save_version(3)
    finally:
        raw.close()


def test_connection_errors_are_storage_errors_that_say_what_to_do(atlas_home):
    with pytest.raises(errors.DatabaseMissingError, match="make atlas"):
        readers.query("SELECT 1")
    Path(layout.db_path()).write_bytes(os.urandom(4096))
    with pytest.raises(errors.DatabaseCorruptError, match="make atlas"):
        readers.query("SELECT 1")
    with pytest.raises(errors.DatabaseCorruptError, match="not a DuckDB database"):
        row_writes.write(
            "vocab", pl.DataFrame({"model": ["m"], "token_id": [0], "token_str": ["a"]}), {"model": "m"}
        )
    Path(layout.db_path()).unlink()
    save_version(1)
    with pytest.raises(errors.DatabaseConfigError, match="memory_limt"):
        with readers.reader(sandboxed=True, settings={"memory_limt": "1GB"}):
            pass
    with pytest.raises(errors.DatabaseConfigError, match="Memory must have a number"):
        with readers.reader(sandboxed=True, settings={"memory_limit": "lots"}):
            pass
    not_a_folder = Path(atlas_home) / "file"
    not_a_folder.write_text("")
    with pytest.raises(errors.DatabaseAccessError, match="writer lock"):
        row_writes.write(
            "vocab", pl.DataFrame({"model": ["m"]}), {"model": "m"}, path=str(not_a_folder / "atlas.duckdb")
        )
    for cls in (
        errors.DatabaseMissingError,
        errors.DatabaseCorruptError,
        errors.DatabaseLockedError,
        errors.SchemaError,
    ):
        assert issubclass(cls, errors.AtlasDatabaseError)


def test_database_from_before_snapshots_is_published_on_first_read(atlas_home):
    con = duckdb.connect(layout.db_path())  # an atlas written by the old code: no snapshots folder
    migrations.migrate(con)
    con.execute("INSERT INTO vocab VALUES ('m', 0, 'a')")
    con.close()
    assert snapshots.current(layout.db_path()) is None
    assert readers.query("SELECT token_str FROM vocab")["token_str"].to_list() == ["a"]
    assert snapshots.current(layout.db_path()) is not None


# ---- the activations unit: shards in a fresh run folder, then the manifest -----------------------------------


def save_shards(version: int) -> None:
    """Harvest-like write of version `version`: 20 rows of x = y = version in 3 shards, then the manifest."""
    writer = act_store.ShardWriter("toy", [0], "train", f"run{version}", shard_tokens=8)
    for start in range(0, 20, 4):
        x = torch.full((4, 8), float(version))
        writer.add(0, torch.arange(start, start + 4), torch.zeros(4, dtype=torch.int16), x, x)
    shards = writer.finish()[0]
    crash_points.crash_point("files_written")
    act_store.record_manifest("toy", 0, "train", shards, {"hook_in": "a", "hook_out": "b", "d_model": 8})


def visible_shards_version() -> int:
    """The version of the activations readers see, after checking every listed shard exists and holds it."""
    paths = act_store.shard_paths("toy", 0, "train")
    versions = {float(act_store.read_shard(p)["x"].unique().item()) for p in paths}
    assert len(versions) == 1 and sum(len(act_store.read_shard(p)["x"]) for p in paths) == 20, versions
    return int(versions.pop())


def _killed_shards(version: int, point: str) -> None:
    code = f"from tests.storage.test_write_units import save_shards; save_shards({version})"
    env = os.environ | {"ATLAS_TEST_CRASH_AT": point}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == -9, f"expected SIGKILL at {point}: rc {proc.returncode}\n{proc.stderr[-2000:]}"


@pytest.mark.parametrize(
    "point", ["files_written", "in_transaction", "committed", "snapshot_copied", "swept"]
)
def test_harvest_killed_at_each_point_leaves_consistent_activations(atlas_home, point):
    save_shards(1)
    _killed_shards(2, point)
    before, after = EXPECTED[point]
    assert visible_shards_version() == before
    publishing.publish()
    assert visible_shards_version() == after
    assert atlas_files.orphans(atlas_home) == []
    save_shards(3)
    save_shards(4)  # run 2 (if it committed) is now in no kept snapshot: swept
    assert visible_shards_version() == 4
    runs = sorted(os.listdir(layout.activation_dir("toy", 0, "train")))
    assert runs == ["run3", "run4"], runs  # the current run and the one the previous snapshot points to


def test_deferred_publishes_once_at_the_end(atlas_home):
    row_writes.write(
        "vocab", pl.DataFrame({"model": ["m"], "token_id": [0], "token_str": ["a"]}), {"model": "m"}
    )
    first = readers.published_path()
    with publishing.deferred():
        for i in range(3):
            rows = pl.DataFrame({"model": ["m"], "token_id": [0], "token_str": [f"b{i}"]})
            row_writes.write("vocab", rows, {"model": "m"})
        assert readers.published_path() == first  # readers still see the last published state
        assert readers.query("SELECT token_str FROM vocab")["token_str"].to_list() == ["a"]
    assert readers.published_path() != first
    assert readers.query("SELECT token_str FROM vocab")["token_str"].to_list() == ["b2"]
    assert len(snapshots.numbered(layout.db_path())) == 2  # one publish for the block, the previous one kept
