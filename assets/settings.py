"""What this atlas is built from: one model, a set of layers, a device. Read from the environment once, since
partitions must be known when the definitions load.

    ATLAS_MODEL   model name (default 'smollm2-135m', the embedded offline default)
    ATLAS_LAYERS  'all' (the default: every layer of the model, read from its config) or comma-separated layer
                  partitions, e.g. '0,2,8,11'
    ATLAS_DEVICE  'cpu', 'cuda', 'cuda:1' or 'auto' (default)
    ATLAS_HOME    artifact root (storage.layout)
"""

from __future__ import annotations

import os

import dagster as dg

from interp.model import DEFAULT_MODEL, n_layers, resolve_device

DEFAULT_LAYERS = "all"


def model_name() -> str:
    return os.environ.get("ATLAS_MODEL", DEFAULT_MODEL)


def layers() -> list[int]:
    raw = os.environ.get("ATLAS_LAYERS", DEFAULT_LAYERS)
    if raw.strip() == "all":
        from storage import layout

        return list(range(n_layers(model_name(), layout.models_dir())))
    try:
        out = sorted({int(x) for x in raw.split(",") if x.strip()})
    except ValueError as e:
        raise ValueError(f"ATLAS_LAYERS={raw!r} must be comma-separated integers, e.g. '0,2,8,11'.") from e
    if not out:
        raise ValueError("ATLAS_LAYERS is empty; give at least one layer, e.g. ATLAS_LAYERS=0.")
    return out


def device() -> str:
    return resolve_device(os.environ.get("ATLAS_DEVICE"))


layer_partitions = dg.StaticPartitionsDefinition([str(layer) for layer in layers()])


def partition_layers(context: dg.AssetExecutionContext) -> list[int]:
    """Layers of this run: one partition, or a range when several partitions run as one (single-run backfill)."""
    return sorted(int(k) for k in context.partition_keys)
