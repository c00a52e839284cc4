"""`make atlas`: materialize every asset of the atlas, in dependency order, through the Dagster CLI.

Each step is an ordinary Dagster run recorded in $DAGSTER_HOME, so the UI (`make ui`) shows the lineage and
metadata of the build afterwards. Steps whose assets are not defined are skipped; layer-partitioned steps run
as one run over the whole partition range: training and mining each make one forward pass per batch for all
layers. Activation shards are optional (`activations`, for re-training a layer from stored activations) and not
part of the default build. Usage: python -m assets.build [--from STEP] [--only STEP ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

from assets import settings
from storage import layout

BUILD_TIMES = "build_times.json"

log = logging.getLogger("atlas.build")

# (step name, asset selection, None | 'range': unpartitioned, or one run over every layer partition)
STEPS: list[tuple[str, str, str | None]] = [
    ("corpus", "contexts,vocab", None),
    # one run per step over every layer: one forward pass per batch feeds every layer's trainer or miner
    ("transcoders", "transcoders", "range"),
    ("splice", "splice_metrics", None),
    # one at a time: each step's torch uses every core; two concurrent steps would oversubscribe them
    ("features", "features", "range"),
    ("feature_tokens", "feature_tokens", "range"),
    ("edges", "feature_edges", None),
    ("graphs", "attribution_graphs", None),
]


def _defined_assets() -> set[str]:
    from assets.definitions import defs

    return {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}


def _materialize(select: str, partition_args: list[str]) -> bool:
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        "assets.definitions",
        "--select",
        select,
    ]
    cmd += partition_args
    log.info("$ %s", " ".join(cmd))
    return subprocess.run(cmd, env=os.environ).returncode == 0


def run_step(select: str, partitions: str | None) -> list[str]:
    """Materialize one step; returns the partitions (or '-') whose run failed.

    A layer whose transcoder fails its quality gate fails the step's blocking check (so the run exits non-zero);
    later steps still run and skip that layer, with the reason in their metadata.
    """
    if partitions is None:
        return [] if _materialize(select, []) else ["-"]
    layers = [str(x) for x in settings.layers()]
    return [] if _materialize(select, ["--partition-range", f"{layers[0]}...{layers[-1]}"]) else layers


def _record(seconds: dict[str, float], failed: dict[str, list[str]], layers: list[str]) -> None:
    """The build's per-stage wall times, for `make bench` (bench/build.py)."""
    path = layout.join(layout.atlas_home(), BUILD_TIMES)
    record = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "layers": layers, "seconds": seconds}
    with layout.fs_for(path).open(path, "w") as f:
        json.dump(record | {"failed": failed}, f, indent=1)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--from", dest="start", choices=[s[0] for s in STEPS], help="skip the steps before this one"
    )
    parser.add_argument("--only", nargs="*", choices=[s[0] for s in STEPS], help="run just these steps")
    args = parser.parse_args(argv)
    defined = _defined_assets()
    names = [s[0] for s in STEPS]
    first = names.index(args.start) if args.start else 0
    t0 = time.perf_counter()
    failed: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    for i, (name, select, partitions) in enumerate(STEPS):
        if i < first or (args.only and name not in args.only):
            continue
        missing = [a for a in select.split(",") if a not in defined]
        if missing:
            log.warning("skipping step %s: assets %s are not defined in this build", name, missing)
            continue
        t = time.perf_counter()
        bad = run_step(select, partitions)
        seconds[name] = round(time.perf_counter() - t, 1)
        log.info(
            "step %s done in %.0f s%s", name, time.perf_counter() - t, f" (failed: {bad})" if bad else ""
        )
        if bad:
            failed[name] = bad
            if name == "corpus":
                break  # nothing downstream can run without these
    _record(seconds, failed, [str(x) for x in settings.layers()])
    log.info(
        "atlas built in %.0f s (ATLAS_HOME=%s)",
        time.perf_counter() - t0,
        os.environ.get("ATLAS_HOME", "data"),
    )
    if failed:
        log.error("failed steps (layer partitions): %s; see `make ui` for the runs", failed)
        sys.exit(1)


if __name__ == "__main__":
    main()
