"""Shared data generators and the cvxpy reference solver for the solver tests."""
from __future__ import annotations

import numpy as np
import pytest

from segmentation.oracle.local import LocalOracle
from segmentation.solver.structure import SegmentStructure

MAPPING = {"A": ["a1", "a2", "a3"], "B": ["b1", "b2"], "C": ["c1"]}


def simulate(seed=0, n=500, p=5, mapping=None, free=(), spread=0.5, n_blocks=1):
    """Logistic data: segment effects ~ N(0, 1), creative deviations ~ N(0, spread^2)."""
    rng = np.random.default_rng(seed)
    st = SegmentStructure.from_mapping(mapping or MAPPING, free=free)
    K = st.n_creatives
    X = rng.normal(size=(n, p - 1))
    creative = rng.integers(0, K, size=n)
    gamma = rng.normal(size=(st.n_segments, p))
    beta = gamma[st.segment_index] + spread * rng.normal(size=(K, p))
    eta = np.einsum("ij,ij->i", np.column_stack([np.ones(n), X]), beta[creative])
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    oracle = LocalOracle.from_arrays(X, y, creative, n_creatives=K, n_blocks=n_blocks)
    return st, oracle, (X, y, creative)


def cvx_reference(st, data, lam, alpha, weights=None):
    """Solve the fused group lasso with cvxpy/Clarabel; returns (gamma, delta). ``weights``
    (``PenaltyWeights``) multiplies each block's term; an infinite factor becomes the
    constraint that the block is zero."""
    cp = pytest.importorskip("cvxpy")
    X, y, creative = data
    n = len(y)
    Xi = np.column_stack([np.ones(n), X])
    m, K, p = st.n_segments, st.n_creatives, Xi.shape[1]
    gamma = cp.Variable((m, p))
    delta = cp.Variable((K, p))
    loss = 0
    for c in range(K):
        rows = creative == c
        eta = Xi[rows] @ (gamma[st.segment_of[c]] + delta[c])
        loss = loss + cp.sum(cp.logistic(eta)) - y[rows] @ eta
    loss = loss / n
    pen = 0
    cons = []
    sizes = st.sizes
    u = np.ones(K) if weights is None else weights.delta
    v = np.ones((m, p)) if weights is None else weights.gamma
    for j in range(m):
        if not st.penalized[j]:
            cons += [delta[c] == 0 for c in st.creatives_of(j)]
            continue
        for c in st.creatives_of(j):
            if np.isinf(u[c]):
                cons.append(delta[c] == 0)
            elif u[c] > 0:
                pen = pen + (1 - alpha) / sizes[j] * u[c] * cp.norm(delta[c], 2)
        for k in range(1, p):
            if np.isinf(v[j, k]):
                cons.append(gamma[j, k] == 0)
            elif v[j, k] > 0 and alpha > 0:
                pen = pen + alpha * v[j, k] * cp.abs(gamma[j, k])
    prob = cp.Problem(cp.Minimize(loss + lam * pen), cons)
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9,
               max_iter=500)
    return gamma.value, delta.value
