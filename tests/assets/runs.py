"""Materialize assets through Dagster the way a build run does: an instance whose `layer` partitions are
registered (assets.settings) and the `atlas_model` resource configured for the test, on the CPU."""

from __future__ import annotations

import dagster as dg

from assets import settings
from assets.resources import RESOURCE_KEY, AtlasModel

TINY_LAYERS = (0, 1, 2)  # the tiny test model's layers (tests/conftest.py)


def materialize(
    assets: list, *, layers: tuple[int, ...] = TINY_LAYERS, model: str = "", **kwargs
) -> dg.ExecuteInProcessResult:
    """dg.materialize with `layers` as the atlas's layer partitions; `model` '' is $ATLAS_MODEL (tiny_atlas)."""
    with dg.DagsterInstance.ephemeral() as instance:
        settings.register_layers(instance, list(layers))
        resources = {RESOURCE_KEY: AtlasModel(name=model, device="cpu")}
        return dg.materialize(assets, instance=instance, resources=resources, **kwargs)
