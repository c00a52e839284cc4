"""The last `make atlas` build's wall time, in all and per step, as recorded by assets/build.py in $ATLAS_HOME."""

from __future__ import annotations

import json

from assets.build import BUILD_TIMES
from storage import layout


def main() -> None:
    path = layout.join(layout.atlas_home(), BUILD_TIMES)
    fs = layout.fs_for(path)
    if not fs.exists(path):
        print(f"   no build recorded at {path} (run `make atlas` first)")
        return
    with fs.open(path) as f:
        record = json.load(f)
    total = record["wall_seconds"]
    print(f"   build of {record['finished']}, {len(record['layers'])} layers: {total / 60:.1f} min")
    width = max(map(len, record["seconds"]))
    for step, s in record["seconds"].items():  # steps of concurrent runs overlap: shares may sum past 100%
        print(f"   {step:<{width}} {s:8.0f} s  {s / total:6.1%}")
    if record["failed"]:
        print(f"   failed: {record['failed']}")
