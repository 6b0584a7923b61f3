"""Separation raises a SeparationError that says what to change; bounded cases stay finite."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from segmentation.errors import SeparationError
from segmentation.oracle.local import LocalOracle
from segmentation.solver.prox_newton import fit
from segmentation.solver.structure import SegmentStructure

ST = SegmentStructure.from_mapping({"A": ["a1", "a2", "a3"], "B": ["b1", "b2"], "ctl": ["k"]},
                                   free=("ctl",))


def _data(seed=0, n=600):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    cr = rng.integers(0, ST.n_creatives, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-0.5 * X[:, 0]))).astype(float)
    return rng, X, cr, y


def _oracle(X, y, cr):
    return LocalOracle.from_arrays(X, y, cr, n_creatives=ST.n_creatives)


def test_perfect_separation_at_lambda_zero_names_the_creative():
    _, X, cr, y = _data()
    m = cr == 1
    y[m] = X[m, 0] > 0                                # a2's response is a threshold of x1
    oracle = _oracle(X, y, cr)
    with pytest.raises(SeparationError, match="'a2'") as err:
        fit(oracle, ST, 0.0, 0.5)
    msg = str(err.value)
    assert "raise lambda" in msg and "covariate" in msg
    assert "'a1'" not in msg and "'b1'" not in msg
    assert oracle.passes <= 15
    # alpha = 1 leaves delta unpenalised: the same divergence, with the advice to lower alpha
    with pytest.raises(SeparationError, match="alpha < 1"):
        fit(oracle, ST, 0.01, 1.0)
    # with lambda > 0 and 0 < alpha < 1 every direction is penalised: finite
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fit(oracle, ST, 0.01, 0.5)
    assert res.converged and np.all(np.isfinite(res.beta))


def test_slow_separation_by_a_binary_covariate_is_caught():
    """|eta| grows by ~1 per step and the gradient drops below tol near |eta| ~ 14: the
    solver must not report this as converged."""
    rng, X, cr, y = _data(1)
    X[:, 1] = np.where(rng.random(len(y)) < 0.5, -1.0, 1.0)
    m = cr == 1
    y[m] = X[m, 1] > 0
    with pytest.raises(SeparationError, match="'a2'"):
        fit(_oracle(X, y, cr), ST, 0.0, 0.5)


def test_pooled_segment_separation_at_alpha_zero():
    rng, X, cr, y = _data(2)
    X[:, 1] = np.where(rng.random(len(y)) < 0.5, -1.0, 1.0)
    m = ST.segment_index[cr] == 0                     # every creative of segment A
    y[m] = X[m, 1] > 0
    oracle = _oracle(X, y, cr)
    with pytest.raises(SeparationError, match="alpha > 0"):
        fit(oracle, ST, 0.01, 0.0)
    res = fit(oracle, ST, 0.01, 0.5)
    assert res.converged and np.all(np.isfinite(res.beta))


def test_free_control_arm_separation():
    _, X, cr, y = _data(3)
    m = cr == 5
    y[m] = X[m, 2] > 0.3
    with pytest.raises(SeparationError, match="'k'.*control arm"):
        fit(_oracle(X, y, cr), ST, 0.01, 0.5)


def test_zero_positive_creative():
    _, X, cr, y = _data(4)
    y[cr == 1] = 0.0                                  # a2 never converts
    oracle = _oracle(X, y, cr)
    # fused into its segment at lambda > 0, alpha < 1: bounded by the group penalty
    for lam in [0.05, 1e-3, 1e-5]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = fit(oracle, ST, lam, 0.5)
        assert res.converged and np.all(np.isfinite(res.beta))
        assert res.beta[1, 0] < res.gamma[0, 0]        # a2 below its segment
    # unbounded intercept: raised before any pass, naming the creative
    oracle.passes = 0
    with pytest.raises(SeparationError, match="'a2' \\(no positive responses\\)"):
        fit(oracle, ST, 0.0, 0.5)
    with pytest.raises(SeparationError, match="'a2'"):
        fit(oracle, ST, 0.05, 1.0)
    assert oracle.passes == 0


def test_segment_without_positives_and_control_without_positives():
    _, X, cr, y = _data(5)
    y[ST.segment_index[cr] == 1] = 0.0                # b1 and b2 never convert
    with pytest.raises(SeparationError, match="segment 'B'"):
        fit(_oracle(X, y, cr), ST, 0.05, 0.5)
    _, X, cr, y = _data(5)
    y[cr == 5] = 1.0                                  # control arm: only positives
    with pytest.raises(SeparationError, match="'k' \\(only positive responses\\)"):
        fit(_oracle(X, y, cr), ST, 0.05, 0.5)


@pytest.mark.parametrize("kind", ["constant", "duplicate", "zero"])
@pytest.mark.parametrize("lam,alpha", [(0.0, 0.5), (0.01, 0.0), (0.01, 0.3), (0.01, 1.0)])
def test_singular_designs_are_fine(kind, lam, alpha):
    _, X, cr, y = _data(6)
    extra = {"constant": np.full(len(y), 3.0), "duplicate": X[:, 0], "zero": np.zeros(len(y))}
    Xe = np.column_stack([X, extra[kind]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no ConvergenceWarning, no RuntimeWarning
        res = fit(_oracle(Xe, y, cr), ST, lam, alpha)
    assert res.converged
    for a in (res.beta, res.gamma, res.delta, res.grad):
        assert np.all(np.isfinite(a))
    assert np.isfinite(res.objective)


def test_outlying_covariate_with_a_finite_fit_does_not_raise():
    """|eta| ~ 50-100 at the (finite) maximum likelihood: saturated, but not diverging."""
    rng = np.random.default_rng(1)
    n = 600
    X = rng.normal(size=(n, 3))
    cr = rng.integers(0, ST.n_creatives, n)
    X[:12, 0] = rng.choice([-80.0, 80.0], size=12)
    cr[:12] = np.arange(12) % ST.n_creatives
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.8 * X[:, 0] - 0.5)))).astype(float)
    oracle = _oracle(X, y, cr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fit(oracle, ST, 0.0, 0.5)
    assert res.converged
    assert np.max(oracle.evaluate(res.beta).max_abs_eta) > 50


def test_advice_reads_as_a_sentence_with_one_tip_or_several():
    from segmentation.solver.penalty import FusedGroupPenalty
    from segmentation.solver.separation import _advice

    only = _advice(FusedGroupPenalty(ST, 0.1, 0.5), free=False)
    assert only.startswith("drop the covariate that predicts the response perfectly"), only
    several = _advice(FusedGroupPenalty(ST, 0.0, 0.5), free=False)
    assert several.startswith("raise lambda above 0") and "; or drop the covariate" in several
