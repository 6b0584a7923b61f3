"""Exact block solvers and the penalised quadratic model."""
from __future__ import annotations

import numpy as np
import pytest

from segmentation.solver.penalty import FusedGroupPenalty
from segmentation.solver.subproblem import QuadraticModel, damped, group_block_solve, lasso_exact

from solver_testdata import simulate


def _psd(rng, p, rank=None, cond=1e3):
    Q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    ev = np.geomspace(1.0, 1.0 / cond, p)
    if rank is not None:
        ev[rank:] = 0.0
    return Q @ np.diag(ev) @ Q.T


@pytest.mark.parametrize("rank", [None, 2])
def test_group_block_solve_optimality(rank):
    rng = np.random.default_rng(0)
    for trial in range(50):
        p = 5
        H, _ = damped(_psd(rng, p, rank))
        ev, V = np.linalg.eigh(H)
        # gradients of a logistic loss lie in the range of its Hessian (X'(mu - y) vs X'WX)
        b = H @ rng.normal(size=p) if rank else rng.normal(size=p)
        w = rng.uniform(0.05, 1.5) * np.linalg.norm(b)
        d = group_block_solve(b, ev, V, w)
        nd = np.linalg.norm(d)
        if np.linalg.norm(b) <= w:
            assert nd == 0.0
        else:
            # stationarity: b + H d + w d/||d|| = 0
            assert nd > 0
            scale = np.linalg.norm(b) + np.linalg.norm(H, 2) * nd
            assert np.linalg.norm(b + H @ d + w * d / nd) <= 1e-12 * scale
            assert rank is None or nd < 1e3       # singular H: still a bounded step


def test_lasso_exact_kkt_on_ill_conditioned_problems():
    rng = np.random.default_rng(1)
    for trial in range(100):
        p = int(rng.integers(2, 8))
        M, _ = damped(_psd(rng, p, cond=10 ** rng.uniform(0, 7)))
        c = 0.1 * rng.normal(size=p)
        w = rng.uniform(0.005, 0.1)
        x = lasso_exact(M, c, w, rng.normal(size=p) * (trial % 2))
        g = c + M @ x
        assert abs(g[0]) < 1e-9
        for k in range(1, p):
            if x[k] != 0:
                assert abs(g[k] + w * np.sign(x[k])) < 1e-9
            else:
                assert abs(g[k]) <= w + 1e-9


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.5, 0.95])
def test_model_solve_is_fast_and_accurate(alpha):
    """The model at beta = 0 of a small problem: residual 1e-10 in a few reduced Newton
    iterations (block coordinate descent needed hundreds to thousands of sweeps here)."""
    st, oracle, _ = simulate(seed=0, n=500, p=5)
    K, p = st.n_creatives, 5
    res = oracle.evaluate(np.zeros((K, p)))
    for lam in [0.003, 0.03]:
        q = QuadraticModel(FusedGroupPenalty(st, lam, alpha), np.zeros((K, p)), res.grad[0],
                           res.hess[0])
        g, d, info = q.solve(np.zeros((st.n_segments, p)), np.zeros((K, p)), 1e-10)
        assert info.residual <= 1e-10
        assert q.residual(g, d) <= 1e-10
        assert info.iterations <= 40                 # summed over 3 segments
