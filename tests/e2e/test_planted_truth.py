"""Planted truth through the whole Spark path: simulate -> prepare -> fit -> assign."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from segmentation.config import parse_config
from segmentation.data.simulate import load_truth, simulate_campaign, true_segments
from segmentation.pipeline import fit_single, prepare
from segmentation.workflow import demo_config


@pytest.mark.slow
def test_recovers_planted_segments_at_200k_users(spark, tmp_path):
    data = str(tmp_path / "campaign")
    simulate_campaign(data, n_users=200_000, seed=0)
    truth = load_truth(data)
    raw = demo_config(data, str(tmp_path / "model"))
    raw["model"] = {"lambda": 0.003, "alpha": 0.1}
    cfg = parse_config(raw)
    prepared = prepare(spark, cfg)
    try:
        model = fit_single(prepared, cfg)
    finally:
        prepared.release()
    assert model.fit["converged"] and model.fit["optimality_residual"] <= cfg.model.tol
    assert model.fit["passes"] <= 40
    users = pd.read_parquet(f"{data}/exposures").drop_duplicates("user_id")
    predicted = np.asarray(model.segments)[model.assign(users)]
    ari = adjusted_rand_score(true_segments(truth, users), predicted)
    assert ari >= 0.9, ari
    unfused = [c for c, f in zip(model.creatives, model.fused) if not f]
    assert unfused == truth["deviant_creatives"]
    # fused creatives carry their segment's coefficients exactly, on both scales
    for c, name in enumerate(model.creatives):
        if model.fused[c]:
            assert np.array_equal(model.beta_fit[c], model.gamma_fit[model.segment_of[c]])
            assert np.array_equal(model.beta[c], model.gamma[model.segment_of[c]])
