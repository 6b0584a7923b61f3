"""Penalty value, exact prox, chain rule and the optimality measures."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from segmentation.solver.optimality import kkt_residual, kkt_violations
from segmentation.solver.penalty import FusedGroupPenalty, theta_gradient, to_beta
from segmentation.solver.structure import SegmentStructure

ST = SegmentStructure.from_mapping({"A": ["a1", "a2", "a3"], "B": ["b1"], "ctl": ["k"]},
                                   free=("ctl",))


def _rand(seed, p=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(ST.n_segments, p)), rng.normal(size=(ST.n_creatives, p))


def test_to_beta_and_chain_rule():
    gamma, delta = _rand(0)
    beta = to_beta(ST, gamma, delta)
    assert np.array_equal(beta[0], gamma[0] + delta[0])
    assert np.array_equal(beta[3], gamma[1] + delta[3])
    # directional derivative: <grad_beta, A dtheta> == <grad_theta, dtheta>
    rng = np.random.default_rng(1)
    g = rng.normal(size=beta.shape)
    dg, dd = _rand(2)
    gg, gd = theta_gradient(ST, g)
    assert np.isclose(np.sum(g * to_beta(ST, dg, dd)), np.sum(gg * dg) + np.sum(gd * dd))
    assert np.allclose(gg[0], g[:3].sum(axis=0))


def test_value_matches_formula_and_free_constraint():
    gamma, delta = _rand(3)
    pen = FusedGroupPenalty(ST, 0.7, 0.3)
    delta[4] = 0.0                                  # free creative must have delta = 0
    expect = 0.7 * (0.7 / 3 * np.linalg.norm(delta[:3], axis=1).sum()
                    + 0.7 * np.linalg.norm(delta[3])
                    + 0.3 * (np.abs(gamma[0, 1:]).sum() + np.abs(gamma[1, 1:]).sum()))
    assert np.isclose(pen.value(gamma, delta), expect)
    delta[4, 0] = 1e-3
    assert pen.value(gamma, delta) == np.inf


@pytest.mark.parametrize("lam,alpha,step", [(0.8, 0.4, 1.0), (0.3, 0.0, 0.5), (0.5, 1.0, 2.0)])
def test_prox_is_the_exact_minimiser(lam, alpha, step):
    gamma, delta = _rand(4)
    pen = FusedGroupPenalty(ST, lam, alpha)
    pg, pd = pen.prox(gamma, delta, step)
    assert np.all(pd[4] == 0.0)
    assert np.array_equal(pg[2], gamma[2])          # free segment untouched

    def obj(th):
        g = th[:gamma.size].reshape(gamma.shape)
        d = th[gamma.size:].reshape(delta.shape)
        d = d.copy()
        d[4] = 0.0
        return pen.value(g, d) + (np.sum((g - gamma) ** 2) + np.sum((d - delta) ** 2)) / (2 * step)

    best = obj(np.concatenate([pg.ravel(), pd.ravel()]))
    rng = np.random.default_rng(5)
    for _ in range(200):                            # no nearby point does better
        th = np.concatenate([pg.ravel(), pd.ravel()]) + 1e-3 * rng.normal(size=gamma.size + delta.size)
        assert obj(th) >= best - 1e-12
    # and a generic optimiser from elsewhere does not beat it
    res = minimize(obj, np.zeros(gamma.size + delta.size), method="Powell",
                   options={"xtol": 1e-10, "ftol": 1e-14, "maxfev": 200000})
    assert best <= res.fun + 1e-9


def test_prox_exact_zeros_and_intercept_unpenalised():
    gamma = np.array([[5.0, 0.1, -0.1, 3.0], [-4.0, 0.2, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    delta = np.zeros((5, 4))
    delta[0] = [0.01, 0.01, 0.0, 0.0]
    delta[1] = [2.0, 0.0, 0.0, 0.0]
    pen = FusedGroupPenalty(ST, 1.0, 0.5)
    pg, pd = pen.prox(gamma, delta, 1.0)
    assert pg[0, 0] == 5.0 and pg[1, 0] == -4.0     # intercepts never shrink
    assert pg[0, 1] == 0.0 and pg[0, 2] == 0.0 and pg[0, 3] == 2.5
    assert np.all(pd[0] == 0.0)                      # ||delta|| <= w -> exactly zero
    assert np.isclose(pd[1, 0], 2.0 - 0.5 / 3)


def test_lambda_inf_is_the_constraint():
    gamma, delta = _rand(6)
    pen = FusedGroupPenalty(ST, np.inf, 0.5)
    pg, pd = pen.prox(gamma, delta, 1.0)
    assert np.all(pd == 0) and np.all(pg[:2, 1:] == 0) and np.array_equal(pg[2], gamma[2])
    assert pen.value(pg, pd) == 0.0
    pen0 = FusedGroupPenalty(ST, np.inf, 0.0)           # alpha = 0: gamma stays free
    pg, pd = pen0.prox(gamma, delta, 1.0)
    assert np.array_equal(pg, gamma) and np.all(pd == 0)


def test_kkt_measures_vanish_at_a_kkt_point_and_flag_the_violated_block():
    # lam = 0.5, alpha = 0.4: w_gamma = 0.2; w_delta = 0.1 (segment A, n=3), 0.3 (b1), 0 (free)
    pen = FusedGroupPenalty(ST, 0.5, 0.4)
    gamma = np.array([[0.3, 0.0, 1.0, 0.0], [0.1, -2.0, 0.0, 0.0], [0.2, 0.5, 0.5, 0.5]])
    delta = np.zeros((5, 4))
    delta[1] = [0.0, 3.0, 4.0, 0.0]                  # a2 unfused: g_a2 = -w d / ||d||
    g = np.zeros((5, 4))
    g[1] = -0.1 * delta[1] / 5.0
    g[0] = [0.01, 0.06, -0.06, 0.0]                   # a1, a3 fused: ||g|| <= 0.1
    g[2] = [-0.01, 0.06, -0.06, 0.0]
    # segment A: G = [0, 0.06, -0.2, 0]: intercept 0, |G1| <= 0.2, gamma[0,2] > 0 -> G2 = -0.2
    g[3] = [0.0, 0.2, 0.1, 0.0]                       # b1: gamma[1,1] < 0 -> G1 = +0.2; ||g|| <= 0.3
    viol = kkt_violations(pen, gamma, delta, g)
    assert np.max(viol["gamma"]) < 1e-15 and np.max(viol["delta"]) < 1e-15
    assert kkt_residual(pen, gamma, delta, g) < 1e-15
    g[3, 0] = 0.05                                    # b1's segment intercept no longer stationary
    viol = kkt_violations(pen, gamma, delta, g)
    assert np.isclose(viol["gamma"][1], 0.05) and viol["gamma"][0] < 1e-15
    assert kkt_residual(pen, gamma, delta, g) > 1e-3
    delta[4, 0] = 0.1                                 # free creative off its constraint
    assert np.isclose(kkt_violations(pen, gamma, delta, g)["delta"][4], 0.1)
