"""`make atlas`: materialize the `atlas` job (assets/definitions.py) for the chosen layers, in the order the asset
graph gives, as Dagster runs recorded in $DAGSTER_HOME (`make ui` shows their lineage and metadata afterwards).

Layers are partitions of the `layer` dynamic partitions definition; the build registers the chosen ones in the
instance first. Two settings make the build fit its machine, both explicit:
- layer ranges (`--runs`): the layers are cut into that many contiguous ranges, each ONE run (training and mining
  make one forward pass per batch for every layer of their run). With one range (the default) the whole atlas is
  a single run. With several, the build runs the assets the ranges need first, then the ranges as concurrent
  runs, each in its own process against the same instance (the path a cluster run launcher takes), then the
  assets that read every layer.
- steps at once (`--max-concurrent`): 1 (the default) uses the in_process executor, one step at a time in one
  process sharing one loaded model, since each step's torch uses every core; more uses the multiprocess executor.

A layer whose transcoder fails its quality gate does not stop the others: downstream steps skip it (their metadata
says why) and the build exits non-zero naming it. Per-step wall times go to $ATLAS_HOME/build_times.json for
`make bench` (bench/build.py).

Usage: python -m assets.build [--layers all|0,2,8] [--from ASSET] [--only ASSET ...] [--runs N]
                              [--max-concurrent N] [--config run.yaml]
(`--only` also takes the optional assets: activations, neuronpedia_export.)
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import dagster as dg
import yaml

from assets import settings
from assets.resources import RESOURCE_KEY, AtlasModel
from storage import layout

BUILD_TIMES = "build_times.json"
GATE = "transcoder_gate"
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"

log = logging.getLogger("atlas.build")


def job_assets() -> list[str]:
    """The assets of the `atlas` job, in an order the graph allows."""
    from assets.definitions import BUILD_JOB, defs

    graph = defs.resolve_asset_graph()
    keys = set(defs.resolve_job_def(BUILD_JOB).asset_layer.selected_asset_keys)
    return [k.to_user_string() for k in graph.toposorted_asset_keys if k in keys]


def build_assets() -> list[str]:
    """The default build: the job's assets but the optional ones."""
    from assets.definitions import OPTIONAL

    return [n for n in job_assets() if n not in OPTIONAL]


def phases(selected: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(before, ranged, after): the assets to run before the layer ranges, in each range run, and after them.

    A range run holds the partitioned assets that read only their own layers and depend on nothing that reads
    more; the unpartitioned assets they depend on run before the ranges, everything else (unpartitioned, reading
    every layer, or downstream of those) after them, over all layers.
    """
    from assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {dg.AssetKey(name) for name in selected}

    def upstream(key: dg.AssetKey) -> set[dg.AssetKey]:
        return graph.get_ancestor_asset_keys(key) & keys

    def own_layers(key: dg.AssetKey) -> bool:
        node = graph.get(key)
        return node.partitions_def == settings.layer_partitions and not any(
            isinstance(m, dg.AllPartitionMapping) for m in node.partition_mappings.values()
        )

    def partitioned(key: dg.AssetKey) -> bool:
        return graph.get(key).partitions_def is not None

    first = {k for k in keys if not partitioned(k) and not any(map(partitioned, upstream(k)))}
    # upstream() is transitive, so an asset's own-layer ancestors pass this test whenever it does
    ranged = {k for k in keys if own_layers(k) and upstream(k) <= first | set(filter(own_layers, keys))}
    before = {k for k in first if any(k in upstream(r) for r in ranged)}
    after = keys - ranged - before
    return tuple([n for n in selected if dg.AssetKey(n) in group] for group in (before, ranged, after))


def layer_ranges(layers: list[int], runs: int) -> list[list[int]]:
    """`layers` cut into at most `runs` contiguous ranges of near-equal size."""
    if runs < 1:
        raise ValueError(f"--runs must be at least 1, got {runs}.")
    runs = min(runs, len(layers))
    size, extra = divmod(len(layers), runs)
    out, start = [], 0
    for i in range(runs):
        end = start + size + (i < extra)
        out.append(layers[start:end])
        start = end
    return out


def run_config(model_name: str, device: str, max_concurrent: int, ops: dict | None = None) -> dict:
    """The run config of every build run: the model resource, the executor, and per-asset config."""
    execution = (
        {"in_process": {}} if max_concurrent <= 1 else {"multiprocess": {"max_concurrent": max_concurrent}}
    )
    return {
        "resources": {RESOURCE_KEY: {"config": {"name": model_name, "device": device}}},
        "execution": {"config": execution},
        **({"ops": ops} if ops else {}),
    }


def execute(assets: list[str], layers: list[int], config: dict) -> str:
    """One run of `assets` over the layer range `layers`; returns its run id (the run is in the instance)."""
    from assets.definitions import build_job

    tags = {RANGE_START: str(layers[0]), RANGE_END: str(layers[-1])}
    log.info("run: %s over layers %s..%s", ", ".join(assets), layers[0], layers[-1])
    with dg.execute_job(
        dg.reconstructable(build_job),
        dg.DagsterInstance.get(),
        run_config=config,
        tags=tags,
        asset_selection=[dg.AssetKey(a) for a in assets],
    ) as result:
        return result.run_id


def _step_spans(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, tuple[float, float]]:
    """step -> (first start, last end) over the runs."""
    spans: dict[str, tuple[float, float]] = {}
    kinds = {
        dg.DagsterEventType.STEP_START,
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.STEP_FAILURE,
    }
    for run_id in run_ids:
        for entry in instance.all_logs(run_id, of_type=kinds):
            lo, hi = spans.get(entry.step_key, (entry.timestamp, entry.timestamp))
            spans[entry.step_key] = (min(lo, entry.timestamp), max(hi, entry.timestamp))
    return spans


def failures(instance: dg.DagsterInstance, runs: dict[str, list[int]]) -> dict[str, list[str]]:
    """step -> the layers (or '-' for a step over the whole atlas) it failed for; the gate check's failed layers;
    'run' -> the ids of runs that failed outside any step."""
    from assets.definitions import defs

    graph = defs.resolve_asset_graph()
    failed: dict[str, list[str]] = {}
    for run_id, layers in runs.items():
        steps = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        for entry in steps:
            key = dg.AssetKey(entry.step_key)
            partitioned = graph.has(key) and graph.get(key).partitions_def is not None
            failed.setdefault(entry.step_key, []).extend(map(str, layers) if partitioned else ["-"])
        if not steps and instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE:
            failed.setdefault("run", []).append(run_id)
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            evaluation = entry.dagster_event.event_specific_data
            if evaluation.check_name == GATE and not evaluation.passed:
                bad = evaluation.metadata["failed"].value + evaluation.metadata["missing"].value
                failed.setdefault(GATE, []).extend(str(layer) for layer in bad)
    return failed


def _record(
    wall: float, seconds: dict[str, float], failed: dict[str, list[str]], layers: list[int], runs: list[str]
) -> None:
    """The build's wall time and per-step wall times (a step of concurrent runs: first start to last end), for
    `make bench` (bench/build.py)."""
    path = layout.join(layout.atlas_home(), BUILD_TIMES)
    record = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "layers": [str(layer) for layer in layers],
        "wall_seconds": round(wall, 1),
        "seconds": seconds,
        "failed": failed,
        "runs": runs,
    }
    with layout.fs_for(path).open(path, "w") as f:
        json.dump(record, f, indent=1)


def build(
    assets: list[str], layers: list[int], config: dict, runs: int = 1
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Materialize `assets` for `layers` (registered as the instance's layer partitions); returns the per-step
    seconds and the failures, and writes both to build_times.json."""
    t0 = time.perf_counter()
    instance = dg.DagsterInstance.get()
    settings.register_layers(instance, layers)
    done: dict[str, list[int]] = {}  # run id -> its layer range
    before, ranged, after = phases(assets)
    if runs == 1 or not ranged:
        done[execute(assets, layers, config)] = layers
    else:
        if before:
            done[execute(before, layers, config)] = layers
        if not failures(instance, done):  # the ranges need what `before` makes
            ranges = layer_ranges(layers, runs)
            with ProcessPoolExecutor(len(ranges), mp_context=multiprocessing.get_context("spawn")) as pool:
                done.update(
                    zip(pool.map(execute, [ranged] * len(ranges), ranges, [config] * len(ranges)), ranges)
                )
            if after:
                done[execute(after, layers, config)] = layers
    spans = _step_spans(instance, list(done))
    seconds = {step: round(hi - lo, 1) for step, (lo, hi) in spans.items()}
    failed = failures(instance, done)
    _record(time.perf_counter() - t0, seconds, failed, layers, list(done))
    return seconds, failed


def _selection(start: str | None, only: list[str] | None) -> list[str]:
    """The build's assets: the default build, only those named (optional ones too), or the default build but the
    assets `start` depends on (built already)."""
    from assets.definitions import defs

    if only:
        return [n for n in job_assets() if n in only]
    names = build_assets()
    if start:
        done = {
            k.to_user_string() for k in defs.resolve_asset_graph().get_ancestor_asset_keys(dg.AssetKey(start))
        }
        return [n for n in names if n not in done]
    return names


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument(
        "--layers",
        default=None,
        help="'all' or e.g. '0,2,8' (default: $ATLAS_LAYERS, else all); they become the instance's layer "
        "partitions, replacing the last build's",
    )
    parser.add_argument(
        "--from", dest="start", choices=build_assets(), help="skip the assets this one depends on"
    )
    parser.add_argument("--only", nargs="*", choices=job_assets(), help="build just these assets")
    parser.add_argument("--runs", type=int, default=1, help="layer ranges, run concurrently (default 1)")
    parser.add_argument(
        "--max-concurrent", type=int, default=1, help="steps at once within a run (default 1: in_process)"
    )
    parser.add_argument("--config", help="YAML with an `ops:` section (per-asset config), as in the UI")
    args = parser.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        parser.error("DAGSTER_HOME is not set: the build records its runs there (`make atlas` sets it).")
    model = AtlasModel()  # '' fields: $ATLAS_MODEL and $ATLAS_DEVICE, read now
    layers = (
        settings.parse_layers(args.layers, model.model_name)
        if args.layers
        else settings.env_layers(model.model_name)
    )
    ops = {}
    if args.config:
        with open(args.config) as f:
            ops = (yaml.safe_load(f) or {}).get("ops", {})
    config = run_config(model.model_name, model.torch_device, args.max_concurrent, ops)
    t0 = time.perf_counter()
    _, failed = build(_selection(args.start, args.only), layers, config, args.runs)
    log.info("atlas built in %.0f s (ATLAS_HOME=%s)", time.perf_counter() - t0, layout.atlas_home())
    if failed:
        log.error("failed (step: layers): %s; see `make ui` for the runs", failed)
        sys.exit(1)


if __name__ == "__main__":
    main()
