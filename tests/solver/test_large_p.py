"""Large-p mode: diagonal curvature (proximal quasi-Newton) reaches the full-Newton solution."""
from __future__ import annotations

import numpy as np
import pytest

from segmentation.solver.curvature import AUTO_MAX_P, resolve_curvature
from segmentation.solver.null_model import fit_null
from segmentation.solver.optimality import kkt_violations
from segmentation.solver.penalty import FusedGroupPenalty
from segmentation.solver.prox_newton import DIAGONAL_ITER_FACTOR, Problem, fit, fit_many
from segmentation.solver.subproblem import (DiagonalQuadraticModel, QuadraticModel,
                                            lasso_exact, lasso_lowrank)

from solver_testdata import simulate

M2 = {"A": ["a1", "a2", "a3"], "B": ["b1"], "ctl": ["k"]}   # free control arm

# (mapping, free, seed, alpha, lambda / lambda_max): the non-borderline cases of test_prox_newton
CASES = [
    (None, (), 0, 0.3, 0.1),
    (None, (), 1, 0.3, 0.6),
    (None, (), 1, 0.5, 0.3),
    (None, (), 0, 0.95, 0.6),
    (M2, ("ctl",), 0, 0.0, 0.1),
    (M2, ("ctl",), 1, 0.3, 0.3),
]


class RecordingOracle:
    """Passes calls through and records the curvature each pass asked for."""

    def __init__(self, oracle):
        self.o = oracle
        self.modes = []
        for a in ("n_features", "n_creatives", "n_folds", "counts", "positives"):
            setattr(self, a, getattr(oracle, a))

    def evaluate(self, betas, include=None, *, curvature=True, heldout=False, label=""):
        self.modes.append(curvature)
        return self.o.evaluate(betas, include, curvature=curvature, heldout=heldout, label=label)


@pytest.mark.parametrize("mapping,free,seed,alpha,frac", CASES)
def test_diagonal_reaches_the_full_newton_solution(mapping, free, seed, alpha, frac):
    st, oracle, _ = simulate(seed=seed, n=500, p=5, mapping=mapping, free=free)
    _, lmax = fit_null(oracle, st, alpha)
    lam = frac * lmax
    full = fit(oracle, st, lam, alpha, tol=1e-9, curvature="full")
    rec = RecordingOracle(oracle)
    diag = fit(rec, st, lam, alpha, tol=1e-9, curvature="diagonal")
    assert full.converged and diag.converged and diag.residual <= 1e-9
    assert abs(diag.objective - full.objective) <= 1e-8 * abs(full.objective)
    assert np.array_equal(diag.fused, full.fused)
    assert np.array_equal(diag.gamma[:, 1:] == 0.0, full.gamma[:, 1:] == 0.0)
    assert np.max(np.abs(diag.beta - full.beta)) < 1e-5
    # exact fusion, KKT at the returned point
    for c in np.flatnonzero(diag.fused):
        assert diag.beta[c].tobytes() == diag.gamma[st.segment_of[c]].tobytes()
    pen = FusedGroupPenalty(st, lam, alpha)
    viol = kkt_violations(pen, diag.gamma, diag.delta, oracle.evaluate(diag.beta).grad[0])
    assert max(viol["gamma"].max(), viol["delta"].max()) <= 1e-8
    # passes: one per call, every call asked for diagonal curvature only; more passes than
    # Newton (linear convergence) but a bounded number
    assert diag.n_passes == len(rec.modes) and set(rec.modes) == {"diagonal"}
    assert full.n_passes <= diag.n_passes <= 150


def test_diagonal_oracle_answer_is_small():
    st, oracle, _ = simulate(seed=0, n=300, p=7)
    r = oracle.evaluate(np.zeros((st.n_creatives, 7)), curvature="diagonal")
    assert r.hess is None and r.hess_diag.shape == (1, st.n_creatives, 7)
    full = oracle.evaluate(np.zeros((st.n_creatives, 7)), curvature=True)
    np.testing.assert_allclose(r.hess_diag[0], np.diagonal(full.hess[0], axis1=1, axis2=2),
                               rtol=1e-12, atol=1e-15)


def test_fit_many_diagonal_equals_separate_fits_and_warm_start_helps():
    st, oracle, _ = simulate(seed=8, n=600, p=5)
    probs = [Problem(0.02, 0.3), Problem(0.01, 0.95), Problem(0.05, 0.5)]
    oracle.passes = 0
    together = fit_many(oracle, st, probs, tol=1e-9, curvature="diagonal")
    assert oracle.passes == max(r.n_passes for r in together)
    for pr, a in zip(probs, together):
        b = fit(oracle, st, pr.lam, pr.alpha, tol=1e-9, curvature="diagonal")
        assert a.converged and np.max(np.abs(a.beta - b.beta)) < 1e-12
        assert a.n_passes == b.n_passes
    cold = fit(oracle, st, 0.018, 0.3, tol=1e-9, curvature="diagonal")
    warm = fit(oracle, st, 0.018, 0.3, tol=1e-9, curvature="diagonal", warm_start=together[0])
    assert warm.converged and abs(warm.objective - cold.objective) <= 1e-10 * abs(cold.objective)
    assert warm.n_passes < cold.n_passes


def test_auto_threshold():
    assert AUTO_MAX_P == 500
    assert resolve_curvature("auto", AUTO_MAX_P) == "full"
    assert resolve_curvature("auto", AUTO_MAX_P + 1) == "diagonal"
    assert resolve_curvature("auto", 10, threshold=5) == "diagonal"
    assert resolve_curvature("full", 10_000) == "full"
    assert resolve_curvature("diagonal", 3) == "diagonal"
    with pytest.raises(ValueError, match="curvature"):
        resolve_curvature("lbfgs", 10)
    with pytest.raises(ValueError, match="curvature"):
        fit(simulate(n=100)[1], simulate(n=100)[0], 0.1, 0.5, curvature="diag")


def test_auto_at_small_p_is_the_full_newton_path_bit_for_bit():
    st, oracle, _ = simulate(seed=3, n=500, p=5)
    rec = RecordingOracle(oracle)
    a = fit(rec, st, 0.02, 0.4, tol=1e-9)                      # default: auto
    b = fit(oracle, st, 0.02, 0.4, tol=1e-9, curvature="full")
    assert set(rec.modes) == {True}
    assert a.gamma.tobytes() == b.gamma.tobytes() and a.delta.tobytes() == b.delta.tobytes()
    assert a.n_passes == b.n_passes


def test_auto_above_threshold_uses_diagonal(monkeypatch):
    import segmentation.solver.curvature as cv
    monkeypatch.setattr(cv, "AUTO_MAX_P", 4)
    st, oracle, _ = simulate(seed=3, n=500, p=5)
    rec = RecordingOracle(oracle)
    res = fit(rec, st, 0.02, 0.4, tol=1e-8, max_iter=5)
    assert set(rec.modes) == {"diagonal"} and res.converged
    assert res.n_iter <= 5 * DIAGONAL_ITER_FACTOR


# ---- the inner pieces ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_lasso_lowrank_matches_dense_lasso(seed):
    rng = np.random.default_rng(seed)
    p, r = 9, seed % 3
    dm = rng.uniform(1.0, 3.0, p)
    L = 0.35 * rng.normal(size=(p, r))
    M = np.diag(dm) - L @ L.T
    assert np.linalg.eigvalsh(M).min() > 0
    c = rng.normal(size=p)
    for w in (0.0, 0.3, 1.0, np.inf):
        x = lasso_lowrank(dm, L, c, w)
        ref = lasso_exact(M, c, w, np.zeros(p))
        assert np.max(np.abs(x - ref)) < 1e-10
        assert np.array_equal(x[1:] == 0, ref[1:] == 0)


@pytest.mark.parametrize("lam,alpha", [(0.02, 0.3), (0.01, 0.95), (0.1, 0.5), (0.03, 1.0)])
def test_diagonal_model_equals_full_model_with_a_diagonal_hessian(lam, alpha):
    st, oracle, _ = simulate(seed=1, n=500, p=6)
    rng = np.random.default_rng(0)
    beta0 = 0.3 * rng.normal(size=(st.n_creatives, 6))
    res = oracle.evaluate(beta0)
    hd = np.diagonal(res.hess[0], axis1=1, axis2=2)
    pen = FusedGroupPenalty(st, lam, alpha)
    g0, d0 = np.zeros((st.n_segments, 6)), np.zeros((st.n_creatives, 6))
    a = QuadraticModel(pen, beta0, res.grad[0], np.stack([np.diag(h) for h in hd])).solve(g0, d0, 1e-11)
    b = DiagonalQuadraticModel(pen, beta0, res.grad[0], hd).solve(g0, d0, 1e-11)
    assert b[2].residual <= 1e-11
    assert np.max(np.abs(a[0] - b[0])) < 1e-9 and np.max(np.abs(a[1] - b[1])) < 1e-9
    assert np.array_equal(np.all(a[1] == 0, axis=1), np.all(b[1] == 0, axis=1))


def test_diagonal_reaches_a_tight_tolerance():
    """Linear convergence crawls through the level where the model decrement is lost in
    rounding (~1e-10 here); the rounding-level steps carry it to tol instead of stopping
    with 'no descent direction'."""
    from segmentation.oracle.local import LocalOracle

    st, _, (X, y, cr) = simulate(seed=8, n=600, p=5)
    folds = np.arange(len(y)) % 3
    oracle = LocalOracle.from_arrays(X, y, cr, folds, n_creatives=st.n_creatives, n_folds=3)
    for f in range(3):
        inc = np.arange(3) != f
        full = fit(oracle, st, 0.02, 0.3, include=inc, tol=1e-10, curvature="full")
        diag = fit(oracle, st, 0.02, 0.3, include=inc, tol=1e-10, curvature="diagonal")
        assert diag.converged and diag.residual <= 1e-10, diag.message
        assert abs(diag.objective - full.objective) <= 1e-12 * abs(full.objective)
        assert np.array_equal(diag.fused, full.fused)
