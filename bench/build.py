"""The last `make atlas` build's wall time per stage, as recorded by assets/build.py in $ATLAS_HOME."""

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
    total = sum(record["seconds"].values())
    print(f"   build of {record['finished']}, {len(record['layers'])} layers: {total / 60:.1f} min")
    for stage, s in record["seconds"].items():
        print(f"   {stage:<12} {s:8.0f} s  {s / total:6.1%}")
    if record["failed"]:
        print(f"   failed: {record['failed']}")
