"""lambda_max is exactly where everything fuses; the null fit is the lam = inf solution."""
from __future__ import annotations

import numpy as np
import pytest

from segmentation.solver.null_model import fit_null, lambda_max
from segmentation.solver.prox_newton import fit

from solver_testdata import simulate

M2 = {"A": ["a1", "a2", "a3"], "B": ["b1", "b2"], "C": ["c1"], "ctl": ["k"]}


@pytest.mark.parametrize("alpha", [0.5, 0.0])
def test_lambda_max_is_where_everything_fuses(alpha):
    st, oracle, _ = simulate(seed=4, n=600, p=5, mapping=M2, free=("ctl",))
    null, lmax = fit_null(oracle, st, alpha)
    assert null.converged and 0 < lmax < np.inf
    pen = st.penalized[st.segment_index]
    assert np.all(null.delta == 0.0)
    if alpha > 0:
        assert np.all(null.gamma[st.penalized, 1:] == 0.0)
    above = fit(oracle, st, 1.0001 * lmax, alpha, tol=1e-9)
    assert np.all(above.fused[pen])
    if alpha > 0:
        assert np.all(above.gamma[st.penalized, 1:] == 0.0)
    assert np.allclose(above.beta, null.beta, atol=1e-7)
    below = fit(oracle, st, 0.95 * lmax, alpha, tol=1e-9)
    some_unfused = not np.all(below.fused[pen])
    some_gamma = alpha > 0 and np.any(below.gamma[st.penalized, 1:] != 0.0)
    assert some_unfused or some_gamma


def test_lambda_max_formula():
    st, _, _ = simulate(seed=0, n=50, p=3, mapping=M2, free=("ctl",))
    g = np.zeros((st.n_creatives, 3))
    g[0] = [0.1, 0.0, 0.0]                           # a1: n_j ||g|| = 0.3
    g[3] = [0.0, 0.0, 0.2]                           # b1: 2 * 0.2 = 0.4; segment B: |G[2]| = 0.2
    g[6] = [5.0, 5.0, 5.0]                           # the free control arm never counts
    assert np.isclose(lambda_max(st, 0.0, g), 0.4)
    assert np.isclose(lambda_max(st, 0.5, g), max(0.4 / 0.5, 0.2 / 0.5))
    assert np.isclose(lambda_max(st, 0.9, g), max(0.4 / 0.1, 0.2 / 0.9))
    with pytest.raises(ValueError, match="alpha"):
        lambda_max(st, 1.0, g)


def test_null_fit_is_the_pooled_fit():
    st, oracle, data = simulate(seed=5, n=600, p=4)
    X, y, cr = data
    null, _ = fit_null(oracle, st, 0.5)
    seg = st.segment_index[cr]
    for j in range(st.n_segments):                   # alpha > 0: intercept = pooled log-odds
        rate = y[seg == j].mean()
        assert np.isclose(null.gamma[j, 0], np.log(rate / (1 - rate)), atol=1e-7)
    null0, _ = fit_null(oracle, st, 0.0)             # alpha = 0: pooled logistic fit per segment
    for j in range(st.n_segments):
        assert np.max(np.abs(null0.grad[st.creatives_of(j)].sum(axis=0))) < 1e-8
