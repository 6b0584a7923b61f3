"""model.curvature reaches the solver: diagonal curvature gives the full-Newton solution;
model.lazy_hessian reaches it too."""
import numpy as np

from segmentation.config import parse_config
from segmentation.pipeline import fit_single, prepare
from .test_bad_input import _config, _frame


def test_diagonal_curvature_matches_full(spark, tmp_path):
    path = tmp_path / "exposures.parquet"
    _frame(n=3000, seed=5).to_parquet(path, index=False)
    fits = {}
    for mode in ("full", "diagonal"):
        cfg = parse_config(_config(tmp_path, path, curvature=mode, tol=1e-9))
        prepared = prepare(spark, cfg)
        try:
            fits[mode] = fit_single(prepared, cfg)
        finally:
            prepared.release()
    full, diag = fits["full"], fits["diagonal"]
    assert "diagonal" in diag.fit["solver"] and "Newton (per-creative Hessians" in full.fit["solver"]
    assert abs(diag.fit["objective"] - full.fit["objective"]) <= 1e-8 * abs(full.fit["objective"])
    np.testing.assert_array_equal(diag.fused, full.fused)
    np.testing.assert_array_equal(diag.gamma_fit == 0, full.gamma_fit == 0)


def test_lazy_hessian_option_reaches_the_solver_and_model_json(spark, tmp_path):
    """model.lazy_hessian: false computes the Hessians at every pass (model.json counts them);
    both settings stop at the same solution by the same KKT test."""
    path = tmp_path / "exposures.parquet"
    _frame(n=3000, seed=7).to_parquet(path, index=False)
    fits = {}
    for lazy in (False, True):
        cfg = parse_config(_config(tmp_path, path, curvature="full", tol=1e-9, lazy_hessian=lazy))
        assert cfg.model.lazy_hessian is lazy
        prepared = prepare(spark, cfg)
        try:
            fits[lazy] = fit_single(prepared, cfg)
        finally:
            prepared.release()
    eager, lazy = fits[False].fit, fits[True].fit
    assert eager["hessian_evaluations"] == eager["passes"]
    assert 1 <= lazy["hessian_evaluations"] <= lazy["passes"]
    assert abs(eager["objective"] - lazy["objective"]) <= 1e-9 * abs(eager["objective"])
    np.testing.assert_array_equal(fits[False].fused, fits[True].fused)
