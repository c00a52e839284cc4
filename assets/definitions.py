"""The Dagster code location: `dagster dev -m assets.definitions` (`make ui`), and the `atlas` job that
`python -m assets.build` (`make atlas`) runs.

Each stage module exposes `ASSETS` and `CHECKS` lists; add a module to STAGES to wire it in. Importing this module
reads no environment variable: the model is the `atlas_model` resource (assets/resources.py), the layers are the
`layer` dynamic partitions registered in the instance (assets/settings.py).
"""

from __future__ import annotations

import importlib

import dagster as dg

from assets.resources import RESOURCE_KEY, AtlasModel

STAGES = [
    "assets.corpus",
    "assets.activations",
    "assets.transcoders",
    "assets.features",
    "assets.circuits",
]
# In the job but not in the default build (assets.build): activation shards (only for re-training a layer from
# stored activations, `source: shards`) and the Neuronpedia export; `python -m assets.build --only ...` runs them.
OPTIONAL = ["activations", "neuronpedia_export"]
BUILD_JOB = "atlas"

_modules = [importlib.import_module(name) for name in STAGES]

# The atlas, in the order the asset graph gives. Its executor is chosen per run (assets.build): in_process runs one
# step at a time in one process, sharing one loaded model (a small machine); multiprocess runs up to
# `max_concurrent` steps in their own processes.
atlas_job = dg.define_asset_job(
    BUILD_JOB,
    selection=dg.AssetSelection.all(),
    executor_def=dg.multi_or_in_process_executor,
    description="Every asset of the atlas; one run covers a range of layer partitions.",
)

defs = dg.Definitions(
    assets=[a for m in _modules for a in getattr(m, "ASSETS", [])],
    asset_checks=[c for m in _modules for c in getattr(m, "CHECKS", [])],
    jobs=[atlas_job],
    resources={RESOURCE_KEY: AtlasModel()},
    # materializations launched from the UI: one step at a time, each in its own process (torch uses every core)
    executor=dg.multiprocess_executor.configured({"max_concurrent": 1}),
)


def build_job() -> dg.JobDefinition:
    """The resolved `atlas` job, for `dg.reconstructable` (runs started in another process rebuild it from here)."""
    return defs.resolve_job_def(BUILD_JOB)
