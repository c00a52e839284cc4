"""The fixture atlas every app test reads: tests/app/fixture_db.py written into a private ATLAS_HOME."""

from __future__ import annotations

import pytest

from tests.app import fixture_db


@pytest.fixture
def atlas_db(atlas_home, tiny_model_dir) -> dict:
    return fixture_db.build(tiny_model_dir) | {"home": atlas_home}
