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
    # full mode: per-model flags (lazy curvature), never the diagonal
    assert all(isinstance(m, np.ndarray) and m.dtype == bool for m in rec.modes)
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


# ---- Anderson acceleration and reused warm-start answers (issue 12, item 4) -----------------
@pytest.mark.parametrize("mapping,free,seed,alpha,frac", [CASES[1], CASES[3], CASES[5]])
@pytest.mark.parametrize("quasi_newton", ["anderson", "spectral"])
def test_diagonal_modes_match_cvxpy(mapping, free, seed, alpha, frac, quasi_newton):
    from segmentation.solver.penalty import to_beta
    from solver_testdata import cvx_reference

    st, oracle, data = simulate(seed=seed, n=500, p=5, mapping=mapping, free=free)
    _, lmax = fit_null(oracle, st, alpha)
    lam = frac * lmax
    res = fit(oracle, st, lam, alpha, tol=1e-9, curvature="diagonal", quasi_newton=quasi_newton)
    assert res.converged and res.residual <= 1e-9
    g_ref, d_ref = cvx_reference(st, data, lam, alpha)
    pen = FusedGroupPenalty(st, lam, alpha)
    d_ref = np.where(np.asarray(pen.free_creative)[:, None], 0.0, d_ref)
    F_ref = float(oracle.evaluate(to_beta(st, g_ref, d_ref)).loss[0]) + pen.value(g_ref, d_ref)
    assert abs(res.objective - F_ref) <= 1e-6 * abs(F_ref)
    assert np.array_equal(res.fused, np.linalg.norm(d_ref, axis=1) < 1e-5)
    pen_j = st.penalized & (alpha > 0)
    assert np.array_equal(res.gamma[pen_j, 1:] == 0.0, np.abs(g_ref[pen_j, 1:]) < 1e-5)


def _path(oracle, st, lams, alpha, **kw):
    null = fit(oracle, st, np.inf, alpha, tol=1e-10, curvature="diagonal")
    out, prev = [], null
    for lam in lams:
        prev = fit(oracle, st, lam, alpha, tol=1e-7, warm_start=prev, **kw)
        out.append(prev)
    return out


def test_anderson_path_same_solutions_as_full_newton_in_fewer_passes_than_spectral():
    """A warm-started path at p = 40 with correlated covariates: the default diagonal mode
    (Anderson, warm answers reused) reaches full Newton's objective, zeros and fusion at
    every lambda, with fewer passes than the spectral scaling in total."""
    from segmentation.oracle.local import LocalOracle
    from segmentation.solver.structure import SegmentStructure

    rng = np.random.default_rng(5)
    st = SegmentStructure.from_mapping({"A": ["a1", "a2", "a3"], "B": ["b1", "b2", "b3"]})
    n, p = 12_000, 40
    Z = rng.standard_normal((n, p - 1)) + 0.6 * rng.standard_normal((n, 1))
    X = np.column_stack([np.ones(n), (Z - Z.mean(0)) / Z.std(0)])
    beta = np.zeros((st.n_creatives, p))
    beta[:, 0] = -1.0
    beta[:, 1:6] = rng.normal(0, 0.4, 5)
    beta[4, 6:9] += 0.5
    cr = rng.integers(0, st.n_creatives, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-np.einsum("ij,ij->i", X, beta[cr])))).astype(float)
    oracle = LocalOracle.from_arrays(X, y, cr, n_creatives=st.n_creatives, add_intercept=False)
    alpha = 0.5
    _, lmax = fit_null(oracle, st, alpha)
    lams = [0.6 * lmax * 0.785 ** k for k in range(4)]
    full = _path(oracle, st, lams, alpha, curvature="full")
    new = _path(oracle, st, lams, alpha, curvature="diagonal", reuse_warm_answer=True)
    old = _path(oracle, st, lams, alpha, curvature="diagonal", quasi_newton="spectral")
    for a, b, c in zip(new, old, full):
        assert a.converged and b.converged and c.converged
        for r in (a, b):
            assert abs(r.objective - c.objective) <= 1e-9 * abs(c.objective)
            assert np.array_equal(r.fused, c.fused)
            assert np.array_equal(r.gamma[:, 1:] == 0, c.gamma[:, 1:] == 0)
    assert any(r.accelerated > 0 for r in new) and all(r.accelerated == 0 for r in old)
    assert sum(r.n_passes for r in new) < sum(r.n_passes for r in old)


def test_reused_warm_answer_saves_exactly_the_warm_start_pass():
    from segmentation.oracle.local import LocalOracle

    st, _, (X, y, cr) = simulate(seed=2, n=800, p=6)
    folds = np.arange(len(y)) % 2
    oracle = LocalOracle.from_arrays(X, y, cr, folds, n_creatives=st.n_creatives, n_folds=2)
    inc = np.array([True, False])
    first = fit(oracle, st, 0.03, 0.5, include=inc, tol=1e-8, curvature="diagonal")
    assert first.include.tolist() == [True, False] and first.hess.shape == (st.n_creatives, 6)
    plain = fit(oracle, st, 0.02, 0.5, include=inc, tol=1e-8, curvature="diagonal",
                warm_start=first)
    rec = RecordingOracle(oracle)
    reused = fit(rec, st, 0.02, 0.5, include=inc, tol=1e-8, curvature="diagonal",
                 warm_start=first, reuse_warm_answer=True)
    # the same oracle answer at the same point: the same iterates, one pass fewer
    assert reused.n_passes == plain.n_passes - 1 == len(rec.modes)
    assert reused.gamma.tobytes() == plain.gamma.tobytes()
    assert reused.delta.tobytes() == plain.delta.tobytes()
    # another include mask (other rows), or full curvature: the warm start's answer is not used
    other = fit(oracle, st, 0.02, 0.5, include=np.array([True, True]), tol=1e-8,
                curvature="diagonal", warm_start=first, reuse_warm_answer=True)
    ref = fit(oracle, st, 0.02, 0.5, include=np.array([True, True]), tol=1e-8,
              curvature="diagonal", warm_start=first)
    assert other.n_passes == ref.n_passes and other.gamma.tobytes() == ref.gamma.tobytes()
    full = fit(oracle, st, 0.02, 0.5, include=inc, tol=1e-8, curvature="full", warm_start=first,
               reuse_warm_answer=True)
    # (full mode keeps its last Hessians, for lazy curvature along a path)
    assert full.hess.shape == (st.n_creatives, 6, 6) and full.n_passes == fit(
        oracle, st, 0.02, 0.5, include=inc, tol=1e-8, curvature="full", warm_start=first).n_passes


def test_quasi_newton_is_checked():
    st, oracle, _ = simulate(n=100)
    with pytest.raises(ValueError, match="quasi_newton"):
        fit(oracle, st, 0.1, 0.5, curvature="diagonal", quasi_newton="lbfgs")
