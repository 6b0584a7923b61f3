"""Make the test-data helpers importable (tests/ is not a package); the planted campaign
several selection tests share."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def camp20k():
    """``cv_testdata.planted(20_000, seed=0, n_folds=3, n_blocks=2)``, built once: (structure,
    LocalOracle, SimulatedCampaign, region levels). Tests read it; pass counts are taken as
    differences (``oracle.passes`` grows with every test that uses it)."""
    from cv_testdata import planted

    return planted(20_000, seed=0, n_folds=3, n_blocks=2)
