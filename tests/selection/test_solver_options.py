"""One ``SolverOptions`` reaches every fit of a cross-validated path: the curvature the caller
asks for is the curvature of every pass (null models, adaptive initial fits, lambda steps,
relaxed refits), and bad options are refused by name."""
from __future__ import annotations

import numpy as np
import pytest

from segmentation.oracle.kernel import curvature_mode
from segmentation.selection.cv import cross_validate
from segmentation.selection.grid import null_fits
from segmentation.solver.options import NULL_TOL, SolverOptions

from cv_testdata import planted


class RecordingOracle:
    """The oracle as is, recording the curvature mode and label of every pass."""

    def __init__(self, oracle):
        self._oracle = oracle
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name):
        return getattr(self._oracle, name)

    def evaluate(self, betas, include=None, *, curvature=True, heldout=False, label=""):
        mode = curvature_mode(np.asarray(curvature, bool) if isinstance(curvature, (list, tuple))
                              else curvature)
        self.calls.append((mode, label))
        return self._oracle.evaluate(betas, include, curvature=curvature, heldout=heldout, label=label)


@pytest.fixture(scope="module")
def campaign():
    st, oracle, _, _ = planted(4_000, seed=5, n_folds=3, n_blocks=2)
    return st, oracle


@pytest.mark.parametrize("adaptive", [None, 1.0])
def test_diagonal_curvature_reaches_every_pass_of_the_path(campaign, adaptive):
    st, oracle = campaign
    rec = RecordingOracle(oracle)
    res = cross_validate(rec, st, [0.2, 0.5], n_lambda=3, lambda_min_ratio=0.1, relax=(0.0, 1.0),
                         adaptive=adaptive, progress=None, curvature="diagonal")
    labels = " | ".join(lab for _, lab in rec.calls)
    assert "null model" in labels and "relaxed refits" in labels
    if adaptive:
        assert "adaptive penalty" in labels
    # p is small, so "auto" would be full Hessians: every training pass must be diagonal
    # (held-out-only passes compute no curvature at all)
    modes = {mode for mode, _ in rec.calls}
    assert modes <= {"diagonal", "none"}, sorted(set(rec.calls))
    assert res.chosen is not None


def test_null_fits_use_the_given_curvature_at_the_null_tolerance(campaign):
    st, oracle = campaign
    rec = RecordingOracle(oracle)
    fits, lmax = null_fits(rec, st, [0.3], options=SolverOptions(tol=1e-4, curvature="diagonal"))
    assert {mode for mode, _ in rec.calls} == {"diagonal"}
    assert fits[0].converged and fits[0].residual <= NULL_TOL
    rec_full = RecordingOracle(oracle)
    fits_full, lmax_full = null_fits(rec_full, st, [0.3])
    assert {mode for mode, _ in rec_full.calls} == {"full"}       # "auto" at small p
    assert lmax[0] == pytest.approx(lmax_full[0], rel=1e-6)


@pytest.mark.parametrize("kw, word", [
    (dict(tol=0), "tol"), (dict(tol=-1e-6), "tol"), (dict(tol=True), "tol"),
    (dict(max_iter=0), "max_iter"), (dict(max_iter=2.5), "max_iter"),
    (dict(curvature="hessian"), "curvature"), (dict(lazy_hessian="yes"), "lazy_hessian"),
    (dict(quasi_newton="bfgs"), "quasi_newton"),
])
def test_bad_options_are_refused_by_name(kw, word):
    with pytest.raises(ValueError, match=word):
        SolverOptions(**kw)


def test_options_are_the_fit_many_keywords():
    opts = SolverOptions(tol=1e-5, max_iter=7, curvature="full", lazy_hessian=False)
    assert opts.fit_kwargs() == dict(tol=1e-5, max_iter=7, curvature="full", lazy_hessian=False,
                                     quasi_newton="anderson")
    assert opts.for_null().tol == NULL_TOL and opts.for_null().curvature == "full"
    assert SolverOptions(tol=1e-10).for_null().tol == 1e-10


def test_cross_validate_takes_options_or_keywords_not_both(campaign):
    st, oracle = campaign
    with pytest.raises(ValueError, match="not both"):
        cross_validate(oracle, st, [0.2], n_lambda=2, relax=None, progress=None,
                       options=SolverOptions(), curvature="diagonal")


def test_the_config_gives_the_runs_options():
    from segmentation.config import ModelConfig

    m = ModelConfig.model_validate({"tol": 1e-7, "max_iter": 9, "curvature": "diagonal",
                                    "lazy_hessian": False})
    assert m.solver_options() == SolverOptions(tol=1e-7, max_iter=9, curvature="diagonal",
                                               lazy_hessian=False)
