"""Policies and per-row terms (numpy), baselines' cluster/creative choices."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from segmentation.evaluation.estimators import Moments, ratio_estimate, value_ratio
from segmentation.evaluation.policies import FoldModels, decisions, row_terms, true_values
from segmentation.policy.baselines import best_creative, cluster_segment_map

# 2 segments x 2 creatives + a control (free segment 2), p = 2 (intercept, x)
SEG_OF = np.array([0, 0, 1, 1, 2])


def _models(F=2):
    beta = np.zeros((F, 5, 2))
    gamma = np.zeros((F, 3, 2))
    for f in range(F):
        gamma[f, 0] = [-1.0, 1.0]           # segment 0 likes x > 0
        gamma[f, 1] = [-1.0, -1.0]          # segment 1 likes x < 0
        gamma[f, 2] = [-1.2, 0.0]           # control
        beta[f] = gamma[f][SEG_OF]
        beta[f, 1, 0] += 0.3                # creative 1 better than 0 within segment 0
    return FoldModels(beta=beta, gamma=gamma, segment_of=SEG_OF, assignable=np.array([0, 1]),
                      control=4, null_gamma=gamma.copy(), best_single=np.array([1, 1]),
                      value_per_response=10.0, cost_per_contact=1.0)


def test_decisions_follow_the_rules():
    fm = _models()
    z = np.array([[1.0, 2.0], [1.0, -2.0], [1.0, 0.1]])
    dec = decisions(z, np.array([0, 1, 0]), fm)
    P = dec["probs"]
    np.testing.assert_allclose(P["segment"][0], [0.5, 0.5, 0, 0, 0])
    np.testing.assert_allclose(P["segment"][1], [0, 0, 0.5, 0.5, 0])
    np.testing.assert_allclose(P["segment_best"][0], [0, 1, 0, 0, 0])
    np.testing.assert_allclose(P["personalized"][1].argmax(), 2)
    np.testing.assert_allclose(P["random"][0], [0.25] * 4 + [0])
    np.testing.assert_allclose(P["best_single"][:, 1], 1)
    assert np.all(P["control"][:, 4] == 1)
    for pi in P.values():
        np.testing.assert_allclose(pi.sum(axis=1), 1.0)
    q = expit(z @ fm.beta[0].T)
    upl0 = q[0, :2].mean() - q[0, 4]
    assert dec["uplift"][0] == pytest.approx(upl0)
    assert dec["treat"][0] == float(10 * upl0 > 1)


def test_row_terms_match_the_formulas():
    fm = _models()
    rng = np.random.default_rng(0)
    n = 50
    z = np.column_stack([np.ones(n), rng.normal(size=n)])
    a = rng.integers(0, 5, n)
    y = rng.integers(0, 2, n).astype(float)
    p = np.full(n, 0.2)
    fold = rng.integers(0, 2, n)
    T, names = row_terms(z, y, a, p, fold, fm)
    dec = decisions(z, fold, fm)
    q = dec["q"]
    for P in ("segment", "personalized", "random", "target"):
        pi = dec["probs"][P]
        w = pi[np.arange(n), a] / p
        np.testing.assert_allclose(T[:, names.index(f"ipw:{P}")], w * y)
        np.testing.assert_allclose(T[:, names.index(f"w:{P}")], w)
        dr = (pi * q).sum(1) + w * (y - q[np.arange(n), a])
        np.testing.assert_allclose(T[:, names.index(f"dr:{P}")], dr)
    mem0 = dec["segment"] == 0
    np.testing.assert_allclose(T[:, names.index("mem:0")], mem0)
    np.testing.assert_allclose(T[:, names.index("upl:0")], mem0 * dec["uplift"])


def test_dr_with_the_true_model_is_unbiased_and_ipw_too():
    """Large uniform-design sample: IPW/SNIPW/DR of a fixed policy agree with its true value."""
    fm = _models(F=1)
    rng = np.random.default_rng(3)
    n = 200_000
    z = np.column_stack([np.ones(n), rng.normal(size=n)])
    a = rng.integers(0, 5, n)
    mu = expit(z @ fm.beta[0].T)
    y = (rng.random(n) < mu[np.arange(n), a]).astype(float)
    T, names = row_terms(z, y, a, np.full(n, 0.2), np.zeros(n, int), fm)
    m = Moments.from_user_totals(T, names)
    truth = true_values(z, fm.beta[0], decisions(z, np.zeros(n, int), fm)["probs"])
    for P in ("segment", "personalized", "best_single", "random"):
        for e in ("ipw", "snipw", "dr"):
            est = ratio_estimate(m, value_ratio(P, e))
            assert abs(est.estimate - truth[P]) < 4 * est.se, (P, e)


def test_cluster_segment_map_and_best_creative():
    # F=1, C=2 clusters, K=4 creatives in segments [0, 0, 1, 1]
    num = np.array([[[10, 10, 2, 2], [1, 1, 9, 9]]], float)
    den = np.full((1, 2, 4), 100.0)
    seg = np.array([0, 0, 1, 1])
    assert cluster_segment_map(num, den, seg, np.array([0, 1])).tolist() == [[0, 1]]
    # empty cluster -> best segment overall (segment 0: 11+11 vs 11+11 tie -> first)
    den2 = den.copy()
    den2[0, 1] = 0
    assert cluster_segment_map(num, den2, seg, np.array([0, 1]))[0, 1] == 0
    assert best_creative(np.array([[5, 9, 7, 8.0]]), np.full((1, 4), 10.0), [0, 2, 3]).tolist() == [3]


def test_logged_propensities_correct_a_covariate_dependent_design():
    """Creatives assigned with x-dependent probabilities: IPW with the logged propensities is
    unbiased, IPW with the marginal shares is not."""
    fm = _models(F=1)
    rng = np.random.default_rng(5)
    n = 200_000
    z = np.column_stack([np.ones(n), rng.normal(size=n)])
    logits = np.column_stack([z[:, 1] * k * 0.4 for k in range(5)])
    P = np.exp(logits - logits.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    a = (P.cumsum(1) > rng.random(n)[:, None]).argmax(1)
    mu = expit(z @ fm.beta[0].T)
    y = (rng.random(n) < mu[np.arange(n), a]).astype(float)
    fold = np.zeros(n, int)
    truth = true_values(z, fm.beta[0], decisions(z, fold, fm)["probs"])
    logged = Moments.from_user_totals(row_terms(z, y, a, P[np.arange(n), a], fold, fm)[0],
                                      row_terms(z[:1], y[:1], a[:1], P[:1, 0], fold[:1], fm)[1])
    shares = np.bincount(a, minlength=5) / n
    marginal = Moments.from_user_totals(row_terms(z, y, a, shares[a], fold, fm)[0], logged.names)
    e_log = ratio_estimate(logged, value_ratio("segment", "ipw"))
    e_mar = ratio_estimate(marginal, value_ratio("segment", "ipw"))
    assert e_log.covers(truth["segment"])
    assert not e_mar.covers(truth["segment"])
