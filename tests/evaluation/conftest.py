"""Shared fixtures: a planted campaign with a control arm, fitted once, evaluated once."""
from __future__ import annotations

import pytest

from segmentation.data.simulate import simulate_arrays
from segmentation.evaluation.simulate import add_control_arm

from evaluation_testdata import FOLDS, N_USERS, make_config, write_campaign


@pytest.fixture(scope="session")
def planted(spark, tmp_path_factory):
    """20k planted users (no deviant creative) + a control arm; model fitted on all rows, data
    prepared with 3 folds; evaluated once (no files, no MLflow)."""
    from segmentation.config import parse_config
    from segmentation.evaluation.run import run_evaluation
    from segmentation.pipeline import fit_single, prepare

    root = tmp_path_factory.mktemp("planted")
    camp = add_control_arm(simulate_arrays(N_USERS, seed=11, deviant=False), seed=11)
    write_campaign(camp, str(root / "data"))
    cfg = parse_config(make_config(str(root / "data"), str(root / "model"), control="ctrl"))
    prepared = prepare(spark, cfg, n_folds=FOLDS)
    model = fit_single(prepared, cfg)
    model.save(str(root / "model"))
    result = run_evaluation(spark, cfg, model, prepared=prepared, write=False)
    yield {"campaign": camp, "cfg": cfg, "prepared": prepared, "model": model, "result": result,
           "root": root}
    prepared.release()


@pytest.fixture(scope="session")
def planted_truth(planted):
    """True value of every cross-fitted policy on the sample's rows (known coefficients)."""
    from segmentation.evaluation import spark as sp
    from segmentation.evaluation.policies import decisions, true_values
    from segmentation.evaluation.simulate import true_beta_fit

    cfg, prepared, res = planted["cfg"], planted["prepared"], planted["result"]
    enc = prepared.encoding
    frame = sp.eval_frame(prepared.df, user_col="user_id", creative_col="creative",
                          response_col="response", creatives=list(prepared.structure.creatives),
                          encoding=enc, n_folds=FOLDS, seed=cfg.cv.seed).toPandas()
    z = enc.transform_numpy(frame)
    fold = frame[sp.FOLD].to_numpy()
    beta_true = true_beta_fit(planted["campaign"].truth, enc, list(prepared.structure.creatives))
    dec = decisions(z, fold, res.fold_models)
    vals = true_values(z, beta_true, dec["probs"])
    return {"values": vals, "frame": frame, "z": z, "fold": fold, "beta": beta_true, "dec": dec}
