"""Testing hook: the named points of a write unit where `tests/storage/test_write_units.py` kills a writer
(SIGKILL) to show that a kill anywhere leaves readers on a consistent snapshot."""

from __future__ import annotations

import os
import signal

CRASH_POINTS = (
    "files_written",  # storage functions: new files exist, no row points to them yet
    "in_transaction",  # rows inserted, not committed
    "committed",  # committed in the working copy, not checkpointed
    "checkpointed",  # working copy closed, not yet copied
    "snapshot_copied",  # the new snapshot is a temporary file, the link still names the old one
    "published",  # the link names the new snapshot; old snapshots and files not yet deleted
    "swept",  # everything done but releasing claims
)


def crash_point(name: str) -> None:
    """SIGKILL this process when ATLAS_TEST_CRASH_AT names this point (one of CRASH_POINTS)."""
    if os.environ.get("ATLAS_TEST_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
