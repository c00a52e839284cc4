"""Dagster wiring: thin assets that call `interp` and write through `storage`. Entry point: assets.definitions."""
