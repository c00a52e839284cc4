"""`make bench`: each module here measures one stage and prints ratios measured in the same run."""

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def scoped_env(name: str, value: str) -> Iterator[None]:
    """Set an environment variable (e.g. ATLAS_HOME to a scratch atlas) and restore it afterwards, so one
    benchmark's scratch paths never leak into the next one's."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
