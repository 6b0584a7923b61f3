"""Make the helpers here importable (tests/ is not a package); the small campaign the CLI
process tests (resume, concurrency, leftovers) fit."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def small_campaign(tmp_path_factory):
    """A simulated campaign of 6,000 users (``simulate_campaign``, seed 5) on disk, read-only:
    a test that changes input files works on a copy."""
    from segmentation.data.simulate import simulate_campaign

    d = tmp_path_factory.mktemp("campaign")
    simulate_campaign(str(d), n_users=6_000, seed=5, overwrite=True, chunk_size=4_000)
    return str(d)
