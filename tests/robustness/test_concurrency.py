"""Two ``segment fit`` runs at once (real processes started together): into different model
directories both succeed; into the same one exactly one wins, the model is that run's complete
output, and the loser exits 5 with one line naming the winner and writes nothing. The three
share one MLflow sqlite store that none of them finds existing: they create it together."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from fit_processes import fit_config, start_fit, stop_group

pytestmark = pytest.mark.slow


@pytest.fixture
def campaign(small_campaign):
    return small_campaign


def _complete(model_dir: str, n_lambda: int) -> dict:
    names = sorted(os.listdir(model_dir))
    assert {"model.json", "cv_table.csv", "calibration.csv"} <= set(names), names
    with open(os.path.join(model_dir, "model.json")) as fh:
        model = json.load(fh)
    table = pd.read_csv(os.path.join(model_dir, "cv_table.csv"))
    assert table["lambda_index"].max() == n_lambda - 1
    grid = model["selection"]["grid"]["0.1"]
    assert len(grid) == n_lambda
    np.testing.assert_allclose(sorted(set(table["lambda"]), reverse=True), grid, rtol=1e-9)
    return model


def test_two_fits_at_once(campaign, tmp_path):
    db = str(tmp_path / "mlflow.db")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    # the two runs into 'two' differ (n_lambda 5 vs 4), so a mix would show
    cfgs = [fit_config(tmp_path, campaign, one, name="a", mlflow_db=db),
            fit_config(tmp_path, campaign, two, name="b", mlflow_db=db),
            fit_config(tmp_path, campaign, two, name="c", mlflow_db=db, n_lambda=4)]
    # the store does not exist yet: all three create it at once (tracking/local_store.py)
    assert not os.path.exists(db)
    procs = [start_fit(c) for c in cfgs]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=900)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            stop_group(p)
    (rc_a, _, err_a), (rc_b, _, err_b), (rc_c, _, err_c) = outs
    assert rc_a == 0, err_a
    _complete(one, 5)
    assert sorted([rc_b, rc_c]) == [0, 5], (err_b[-2000:], err_c[-2000:])
    win, lose = (1, 2) if rc_b == 0 else (2, 1)
    msg = outs[lose][2].strip().splitlines()
    assert len(msg) == 1 and msg[0].startswith("error: ") and "being written by another run" in msg[0]
    assert f"pid {procs[win].pid}" in msg[0] and two in msg[0]
    _complete(two, 5 if win == 1 else 4)
    leftovers = [n for n in os.listdir(tmp_path)
                 if n.startswith((".two.tmp-", ".one.tmp-", "two.old-")) or n.endswith((".checkpoint", ".lock"))]
    assert leftovers == []
