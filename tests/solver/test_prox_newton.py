"""Proximal Newton against cvxpy/Clarabel, KKT, exact fusion, pass counts and the ask/tell API."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from segmentation.errors import ConvergenceWarning
from segmentation.solver.null_model import fit_null
from segmentation.solver.optimality import kkt_violations
from segmentation.solver.penalty import FusedGroupPenalty, to_beta
from segmentation.solver.prox_newton import ProxNewton, fit

from solver_testdata import cvx_reference, simulate

M1 = None                                              # {A: 3, B: 2, C: 1} (conftest.MAPPING)
M2 = {"A": ["a1", "a2", "a3"], "B": ["b1"], "ctl": ["k"]}   # free control arm

# (mapping, free, seed, alpha, lambda as a fraction of lambda_max): chosen so that no creative or
# gamma entry is borderline (asserted below). No alpha = 0 with a two-creative segment: there the
# split between gamma_j and the two deltas is not unique (any gamma_j on the segment between the
# two betas is optimal), so the fused set is not well defined.
CASES = [
    (M1, (), 0, 0.3, 0.1),
    (M1, (), 1, 0.3, 0.6),
    (M1, (), 1, 0.5, 0.3),
    (M1, (), 0, 0.95, 0.6),
    (M1, (), 2, 0.95, 0.6),
    (M2, ("ctl",), 0, 0.0, 0.1),
    (M2, ("ctl",), 1, 0.0, 0.6),
    (M2, ("ctl",), 1, 0.3, 0.3),
]


def _margins(st, res, lam, alpha):
    """How far the solution is from changing its fused set / gamma zero pattern."""
    pen = FusedGroupPenalty(st, lam, alpha)
    gn = np.linalg.norm(res.grad, axis=1)
    G = np.zeros_like(res.gamma)
    np.add.at(G, st.segment_index, res.grad)
    fused_ratio = max([gn[c] / pen.w_delta[c] for c in range(st.n_creatives)
                       if res.fused[c] and pen.w_delta[c] > 0], default=0.0)
    unfused_norm = min([np.linalg.norm(res.delta[c]) for c in range(st.n_creatives)
                        if not res.fused[c]], default=np.inf)
    pen_j = [j for j in range(st.n_segments) if pen.w_gamma[j] > 0]
    zero_ratio = max([abs(G[j, k]) / pen.w_gamma[j] for j in pen_j for k in range(1, G.shape[1])
                      if res.gamma[j, k] == 0.0], default=0.0)
    nonzero = min([abs(res.gamma[j, k]) for j in pen_j for k in range(1, G.shape[1])
                   if res.gamma[j, k] != 0.0], default=np.inf)
    return fused_ratio, unfused_norm, zero_ratio, nonzero


@pytest.mark.parametrize("mapping,free,seed,alpha,frac", CASES)
def test_matches_cvxpy(mapping, free, seed, alpha, frac):
    st, oracle, data = simulate(seed=seed, n=500, p=5, mapping=mapping, free=free)
    _, lmax = fit_null(oracle, st, alpha)
    lam = frac * lmax
    res = fit(oracle, st, lam, alpha, tol=1e-9)
    assert res.converged and res.residual <= 1e-9
    fr, un, zr, nz = _margins(st, res, lam, alpha)
    assert fr < 0.9 and un > 1e-2 and zr < 0.9 and nz > 1e-3, "test case is borderline"

    g_ref, d_ref = cvx_reference(st, data, lam, alpha)
    pen = FusedGroupPenalty(st, lam, alpha)
    d_ref = np.where(np.asarray(pen.free_creative)[:, None], 0.0, d_ref)
    F_ref = float(oracle.evaluate(to_beta(st, g_ref, d_ref)).loss[0]) + pen.value(g_ref, d_ref)
    gap = (res.objective - F_ref) / abs(F_ref)
    assert abs(gap) <= 1e-6, gap
    # same fused creatives, same zero entries of gamma (penalised segments, covariates)
    assert np.array_equal(res.fused, np.linalg.norm(d_ref, axis=1) < 1e-5)
    pen_j = st.penalized & (alpha > 0)
    assert np.array_equal(res.gamma[pen_j, 1:] == 0.0, np.abs(g_ref[pen_j, 1:]) < 1e-5)
    assert np.max(np.abs(res.beta - to_beta(st, g_ref, d_ref))) < 1e-4


@pytest.mark.parametrize("mapping,free,seed,alpha,frac", CASES[::2])
def test_kkt_and_exact_fusion(mapping, free, seed, alpha, frac):
    st, oracle, _ = simulate(seed=seed, n=500, p=5, mapping=mapping, free=free)
    _, lmax = fit_null(oracle, st, alpha)
    lam = frac * lmax
    res = fit(oracle, st, lam, alpha, tol=1e-8)
    pen = FusedGroupPenalty(st, lam, alpha)
    grad = oracle.evaluate(res.beta).grad[0]
    viol = kkt_violations(pen, res.gamma, res.delta, grad)
    assert np.max(viol["gamma"]) <= 1e-8 and np.max(viol["delta"]) <= 1e-8
    assert np.any(res.fused) and not np.all(res.fused)
    for c in np.flatnonzero(res.fused):
        j = st.segment_of[c]
        assert np.all(res.delta[c] == 0.0)
        assert res.beta[c].tobytes() == res.gamma[j].tobytes()          # bit for bit
    for c in np.flatnonzero(pen.free_creative):
        assert np.all(res.delta[c] == 0.0)
    vals = res.gamma[:, 1:][st.penalized]
    if alpha > 0:
        assert np.any(vals == 0.0)                     # exact zeros, from the prox ...
    assert np.all((vals == 0.0) | (np.abs(vals) > 1e-6))   # ... and no near-zero dust
    dn = np.linalg.norm(res.delta, axis=1)
    assert np.all((dn == 0.0) | (dn > 1e-6))
    assert np.all(np.isfinite(res.beta))


def test_pass_counts_cold_and_warm():
    st, oracle, _ = simulate(seed=0, n=600, p=5)
    for alpha in [0.0, 0.3, 0.95]:
        _, lmax = fit_null(oracle, st, alpha)
        lam = 0.1 * lmax
        oracle.passes = 0
        cold = fit(oracle, st, lam, alpha)
        assert cold.converged and oracle.passes == cold.n_passes <= 40
        oracle.passes = 0
        warm = fit(oracle, st, 0.8 * lam, alpha, warm_start=cold)
        assert warm.converged and oracle.passes == warm.n_passes <= 10
        oracle.passes = 0
        warm2 = fit(oracle, st, 0.8 * lam, alpha, warm_start=(cold.gamma, cold.delta))
        assert oracle.passes == warm2.n_passes <= 10


def test_planted_truth_is_recovered():
    """3 segments x 3 creatives; creative b3 deviates strongly from segment B."""
    rng = np.random.default_rng(7)
    from segmentation.oracle.local import LocalOracle
    from segmentation.solver.structure import SegmentStructure

    st = SegmentStructure.from_mapping({"A": ["a1", "a2", "a3"], "B": ["b1", "b2", "b3"],
                                        "C": ["c1", "c2", "c3"]})
    n, p = 6000, 4
    gamma = np.array([[-1.0, 1.5, 0.0, 0.0],
                      [-1.0, 0.0, 1.5, 0.0],
                      [-1.0, 0.0, 0.0, 1.5]])
    beta = gamma[st.segment_index].copy()
    beta[5] += [1.0, -1.5, -1.5, 1.5]                  # b3: a creative gone its own way
    X = rng.normal(size=(n, p - 1))
    cr = rng.integers(0, 9, size=n)
    eta = np.einsum("ij,ij->i", np.column_stack([np.ones(n), X]), beta[cr])
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    oracle = LocalOracle.from_arrays(X, y, cr, n_creatives=9)
    alpha = 0.2
    _, lmax = fit_null(oracle, st, alpha)
    res = fit(oracle, st, 0.15 * lmax, alpha)
    assert res.converged
    assert not res.fused[5]
    assert np.all(res.fused[[3, 4]])                   # b1, b2 fused: b3 the only deviant in B
    Xi = np.column_stack([np.ones(n), X])
    truth = np.argmax(Xi @ gamma.T, axis=1)
    found = np.argmax(Xi @ res.gamma.T, axis=1)
    assert np.mean(truth == found) >= 0.8


def test_max_iter_warns_and_is_not_converged():
    st, oracle, _ = simulate(seed=0)
    with pytest.warns(ConvergenceWarning, match="residual"):
        res = fit(oracle, st, 0.01, 0.5, max_iter=2)
    assert not res.converged and res.n_iter == 2 and res.residual > 1e-6
    assert "max_iter" in res.message


def test_ask_tell_state_machine():
    st, oracle, _ = simulate(seed=1)
    state = ProxNewton(st, 0.02, 0.5, oracle.n_features, tol=1e-7)
    assert not state.done and not state.converged
    first = state.ask()
    assert first.shape == (st.n_creatives, oracle.n_features) and np.all(first == 0)
    n = 0
    while (beta := state.ask()) is not None:
        r = oracle.evaluate(beta)
        state.tell(r.loss[0], r.grad[0], r.hess[0], r.max_abs_eta[0])
        n += 1
    assert state.done and state.converged and state.ask() is None
    res = state.result()
    assert res.n_passes == n and res.converged and res.residual <= 1e-7
    with pytest.raises(RuntimeError):
        state.tell(r.loss[0], r.grad[0], r.hess[0], r.max_abs_eta[0])
    same = fit(oracle, st, 0.02, 0.5, tol=1e-7)      # fit(): pooled log-odds cold start
    assert np.allclose(same.beta, res.beta, atol=1e-5)


def test_lambda_zero_and_alpha_one_give_the_unpenalised_fit():
    st, oracle, _ = simulate(seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        free = fit(oracle, st, 0.0, 0.5, tol=1e-9)
        a1 = fit(oracle, st, 0.05, 1.0, tol=1e-9)
    assert np.allclose(free.beta, a1.beta, atol=1e-7)
    assert np.all(a1.gamma[:, 1:] == 0.0)           # alpha = 1: gamma[1:] = 0 for lambda > 0
    assert np.max(np.abs(free.grad)) < 1e-8
