"""Fixtures shared by the storage tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def fixture_atlas(atlas_home, tiny_model_dir) -> dict:
    """The app tests' small but complete atlas (tests/app/fixture_db.py), built in a fresh ATLAS_HOME."""
    from tests.app import fixture_db

    return fixture_db.build(tiny_model_dir)
