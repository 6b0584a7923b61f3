"""Per-block penalty factors (``PenaltyWeights``): against cvxpy/Clarabel with finite and
infinite factors, the pattern constraint they express, and the weighted lasso kernels."""
from __future__ import annotations

import numpy as np
import pytest

from segmentation.solver.null_model import fit_null
from segmentation.solver.optimality import kkt_violations
from segmentation.solver.penalty import FusedGroupPenalty, PenaltyWeights, to_beta
from segmentation.solver.prox_newton import fit
from segmentation.solver.subproblem import lasso_exact, lasso_lowrank

from solver_testdata import cvx_reference, simulate

M2 = {"A": ["a1", "a2", "a3"], "B": ["b1"], "ctl": ["k"]}


def _objective(oracle, st, lam, alpha, weights, gamma, delta):
    pen = FusedGroupPenalty(st, lam, alpha, weights)
    return float(oracle.evaluate(to_beta(st, gamma, delta)).loss[0]) + pen.value(gamma, delta)


def _random_weights(st, p, seed):
    rng = np.random.default_rng(seed)
    return PenaltyWeights(rng.uniform(0.2, 3.0, size=(st.n_segments, p)),
                          rng.uniform(0.2, 3.0, size=st.n_creatives))


@pytest.mark.parametrize("seed,alpha,frac,curvature", [
    (0, 0.3, 0.15, "full"), (1, 0.5, 0.3, "full"), (2, 0.3, 0.15, "diagonal"),
])
def test_weighted_fit_matches_cvxpy(seed, alpha, frac, curvature):
    st, oracle, data = simulate(seed=seed, n=600, p=5)
    _, lmax = fit_null(oracle, st, alpha)
    lam = frac * lmax
    w = _random_weights(st, 5, seed)
    res = fit(oracle, st, lam, alpha, tol=1e-9, weights=w, curvature=curvature, max_iter=200)
    assert res.converged and res.residual <= 1e-9
    g_ref, d_ref = cvx_reference(st, data, lam, alpha, weights=w)
    F_ref = _objective(oracle, st, lam, alpha, w, g_ref, np.where(np.linalg.norm(d_ref, axis=1)[:, None] < 1e-7, 0, d_ref))
    assert res.objective <= F_ref + 1e-6 * abs(F_ref)
    assert abs(res.objective - F_ref) <= 1e-6 * abs(F_ref)
    assert np.max(np.abs(res.beta - to_beta(st, g_ref, d_ref))) < 1e-4
    plain = fit(oracle, st, lam, alpha, tol=1e-9, curvature=curvature, max_iter=200)
    assert np.max(np.abs(plain.beta - res.beta)) > 1e-2       # the factors do change the answer
    # the weighted KKT conditions hold at our solution
    viol = kkt_violations(FusedGroupPenalty(st, lam, alpha, w), res.gamma, res.delta, res.grad)
    assert max(viol["gamma"].max(), viol["delta"].max()) < 1e-7


def test_unit_weights_are_the_unweighted_problem():
    st, oracle, _ = simulate(seed=3, n=500, p=5)
    _, lmax = fit_null(oracle, st, 0.3)
    a = fit(oracle, st, 0.2 * lmax, 0.3, tol=1e-10)
    b = fit(oracle, st, 0.2 * lmax, 0.3, tol=1e-10, weights=PenaltyWeights.ones(st.n_segments, st.n_creatives, 5))
    np.testing.assert_allclose(b.beta, a.beta, rtol=0, atol=1e-10)
    assert np.array_equal(a.fused, b.fused) and np.array_equal(a.gamma == 0, b.gamma == 0)


@pytest.mark.parametrize("active", [1e-3, 1.0])
def test_pattern_weights_fix_zero_blocks_and_match_cvxpy(active):
    """Infinite factors: the fused creatives and the zero gamma entries of a penalised fit stay
    exactly zero in a refit with the rest (lightly) penalised, and the refit is the
    constrained optimum cvxpy finds."""
    st, oracle, data = simulate(seed=1, n=800, p=5, mapping=M2, free=("ctl",), spread=0.3)
    _, lmax = fit_null(oracle, st, 0.3)
    lam = 0.25 * lmax
    base = fit(oracle, st, lam, 0.3, tol=1e-10)
    assert base.fused.sum() >= 2 and np.any(base.gamma[:2, 1:] == 0)
    w = PenaltyWeights.pattern(base.gamma, base.delta, active=active)
    res = fit(oracle, st, lam, 0.3, tol=1e-9, weights=w, warm_start=base, max_iter=200)
    assert res.converged
    assert np.array_equal(res.fused, base.fused)
    assert np.all(res.gamma[base.gamma == 0] == 0.0)
    fused = np.flatnonzero(res.fused)
    assert np.array_equal(res.beta[fused], res.gamma[st.segment_index[fused]])   # bit for bit
    g_ref, d_ref = cvx_reference(st, data, lam, 0.3, weights=w)
    F_ref = _objective(oracle, st, lam, 0.3, w, g_ref, np.where(np.isinf(w.delta)[:, None], 0, d_ref))
    assert abs(res.objective - F_ref) <= 1e-6 * abs(F_ref)
    assert np.max(np.abs(res.beta - to_beta(st, g_ref, d_ref))) < 1e-4
    if active == 1.0:   # the penalised solution satisfies its own pattern: nothing moves
        np.testing.assert_allclose(res.beta, base.beta, atol=1e-7)
    else:               # relaxed: a smaller loss than the penalised fit on the same pattern
        assert res.loss < base.loss


def test_weighted_lasso_kernels_agree():
    rng = np.random.default_rng(0)
    for trial in range(30):
        p, r = 8, 2
        dm = rng.uniform(1.0, 3.0, size=p)
        L = rng.normal(size=(p, r)) * 0.3
        M = np.diag(dm) - L @ L.T
        c = rng.normal(size=p)
        w = rng.uniform(0.0, 1.5, size=p)
        w[rng.random(p) < 0.25] = np.inf
        w[rng.random(p) < 0.15] = 0.0
        x = lasso_exact(M, c, w, np.zeros(p))
        y = lasso_lowrank(dm, L, c, w)
        np.testing.assert_allclose(x, y, atol=1e-9)
        w0 = w.copy(); w0[0] = 0.0
        assert np.all(x[1:][np.isinf(w0[1:])] == 0.0)
        g = c + M @ x
        fin = np.isfinite(w0)
        on = fin & (x != 0)
        assert np.all(np.abs(g[on] + w0[on] * np.sign(x[on])) < 1e-9)
        off = fin & (x == 0)
        assert np.all(np.abs(g[off]) <= w0[off] + 1e-9)


def test_weights_validation():
    with pytest.raises(ValueError, match=">= 0"):
        PenaltyWeights(-np.ones((2, 3)), np.ones(3))
    st, _, _ = simulate(seed=0, n=50, p=3)
    with pytest.raises(ValueError, match="penalty weights must be"):
        FusedGroupPenalty(st, 1.0, 0.5, PenaltyWeights(np.ones((2, 3)), np.ones(6)))
    a = PenaltyWeights.adaptive(np.array([[1.0, 0.0, 2.0]]), np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]]))
    assert a.gamma[0, 0] == 0 and np.isinf(a.gamma[0, 1]) and a.gamma[0, 2] == 0.5
    assert np.isinf(a.delta[0]) and a.delta[1] == pytest.approx(0.2)


def test_weighted_lambda_max_is_where_the_weighted_null_stops_being_optimal():
    from segmentation.solver.null_model import lambda_max

    st, oracle, _ = simulate(seed=4, n=800, p=5, spread=0.6)
    w = _random_weights(st, 5, 4)
    for alpha in (0.0, 0.3):
        null = fit(oracle, st, np.inf, alpha, tol=1e-10, weights=w)
        lmax = lambda_max(st, alpha, null.grad, w)
        assert lmax != pytest.approx(lambda_max(st, alpha, null.grad))
        above = fit(oracle, st, 1.001 * lmax, alpha, tol=1e-10, weights=w, warm_start=null)
        assert above.fused.all() and np.all(above.gamma[:, 1:] == 0) if alpha > 0 else above.fused.all()
        below = fit(oracle, st, 0.98 * lmax, alpha, tol=1e-10, weights=w, warm_start=null)
        moved = (~below.fused).any() or (alpha > 0 and np.any(below.gamma[:, 1:] != 0))
        assert moved
