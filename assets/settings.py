"""Which layers the atlas covers: the keys of the dynamic partitions definition `layer`.

The layer set lives in the Dagster instance, not in the environment: `python -m assets.build` registers the
chosen layers there before its runs (`register_layers`), and every run reads them back (`partition_layers` for a
partitioned step, `atlas_layers` for a step over the whole atlas). Nothing here reads the environment when the
definitions load, so tests and the UI import `assets.definitions` as they are. The model and the device are the
`AtlasModel` resource's config (assets/resources.py).

    ATLAS_LAYERS  the build's default layer set: 'all' (every layer of the model, read from its config) or
                  comma-separated layers, e.g. '0,2,8,11'
"""

from __future__ import annotations

import os

import dagster as dg

from interp.model import n_layers
from storage import layout

DEFAULT_LAYERS = "all"

# keys are layer numbers as strings, registered in ascending order (a partition range is an ascending span)
layer_partitions = dg.DynamicPartitionsDefinition(name="layer")


def parse_layers(spec: str, model_name: str) -> list[int]:
    """'all' or comma-separated layer numbers -> sorted distinct layers, checked against the model's depth."""
    depth = n_layers(model_name, layout.models_dir())
    if spec.strip() == "all":
        return list(range(depth))
    try:
        out = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError as e:
        raise ValueError(
            f"layers {spec!r} must be 'all' or comma-separated integers, e.g. '0,2,8,11'."
        ) from e
    if not out:
        raise ValueError("The layer list is empty; give at least one layer, e.g. '0', or 'all'.")
    if out[0] < 0 or out[-1] >= depth:
        raise ValueError(f"layers {spec!r}: {model_name} has layers 0..{depth - 1}.")
    return out


def env_layers(model_name: str) -> list[int]:
    """The layers ATLAS_LAYERS names (default 'all'), for the build's and the scripts' command-line defaults."""
    return parse_layers(os.environ.get("ATLAS_LAYERS", DEFAULT_LAYERS), model_name)


def register_layers(instance: dg.DagsterInstance, layers: list[int]) -> None:
    """Make `layers` the instance's `layer` partitions, in ascending order (other keys are removed)."""
    want = [str(layer) for layer in sorted(layers)]
    have = instance.get_dynamic_partitions(layer_partitions.name)
    if have == want:
        return
    for key in have:  # re-added in order below: a range `0...11` must not skip a layer added later
        instance.delete_dynamic_partition(layer_partitions.name, key)
    instance.add_dynamic_partitions(layer_partitions.name, want)


def atlas_layers(instance: dg.DagsterInstance) -> list[int]:
    """Every layer registered in the instance: the layers of a step over the whole atlas."""
    keys = instance.get_dynamic_partitions(layer_partitions.name)
    if not keys:
        raise LookupError(
            "No layer partitions are registered in this Dagster instance; `python -m assets.build` registers "
            "them (or add them under the `layer` partitions in the UI)."
        )
    return sorted(int(k) for k in keys)


def partition_layers(context: dg.AssetExecutionContext) -> list[int]:
    """Layers of this run: one partition, or a range when several partitions run as one (single-run backfill)."""
    return sorted(int(k) for k in context.partition_keys)
