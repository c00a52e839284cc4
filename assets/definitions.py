"""The Dagster code location: `dagster dev -m assets.definitions` / `dagster asset materialize -m assets.definitions`.

Each stage module exposes `ASSETS` and `CHECKS` lists; add a module to STAGES to wire it in.
"""

from __future__ import annotations

import importlib

import dagster as dg

STAGES = [
    "assets.corpus",
    "assets.activations",
    "assets.transcoders",
    "assets.features",
    "assets.circuits",
]

_modules = [importlib.import_module(name) for name in STAGES]

defs = dg.Definitions(
    assets=[a for m in _modules for a in getattr(m, "ASSETS", [])],
    asset_checks=[c for m in _modules for c in getattr(m, "CHECKS", [])],
    executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
)
