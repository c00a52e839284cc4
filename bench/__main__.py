"""Run every benchmark module (or those named on the command line): `python -m bench [harvest train ...]`."""

from __future__ import annotations

import importlib
import logging
import sys
import time

MODULES = ["build", "harvest", "train", "sample_efficiency", "features", "circuits", "app", "steer"]


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    for name in argv or MODULES:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"bench.{name}":
                raise
            print(f"== {name}: no benchmark module yet")
            continue
        print(f"== {name}")
        t0 = time.perf_counter()
        module.main()
        print(f"   ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
