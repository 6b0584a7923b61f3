"""The issue's miscalibration case as an in-memory oracle: one segment whose three creatives
share their slopes but differ in base rate (about 33, 36 and 39 %), beside a segment whose
three creatives truly respond alike."""
from __future__ import annotations

import numpy as np

from segmentation.oracle.local import LocalOracle
from segmentation.solver.structure import SegmentStructure

MAPPING = {"S": ["s1", "s2", "s3"], "T": ["t1", "t2", "t3"]}


def base_rate_campaign(n_per_creative: int = 35_000, seed: int = 0, n_folds: int = 5, p: int = 5):
    """(structure, oracle, data) with data = dict(X, y, creative, fold, rates): ``rates`` the
    true response rate of each creative over its users."""
    rng = np.random.default_rng(seed)
    st = SegmentStructure.from_mapping(MAPPING)
    K = st.n_creatives
    slope_s = np.array([0.30, -0.20, 0.0, 0.10][: p - 1] + [0.0] * max(0, p - 5))
    slope_t = np.array([-0.25, 0.0, 0.30, 0.0][: p - 1] + [0.0] * max(0, p - 5))
    # intercepts giving base rates of about 33, 36, 39 % (S) and 30 % for every T creative
    logit = lambda r: np.log(r / (1 - r))  # noqa: E731
    beta = np.zeros((K, p))
    for c, r in enumerate([0.33, 0.36, 0.39]):
        beta[c] = np.r_[logit(r), slope_s]
    for c in range(3, 6):
        beta[c] = np.r_[logit(0.30), slope_t]
    n = n_per_creative * K
    X = rng.normal(size=(n, p - 1))
    creative = np.repeat(np.arange(K), n_per_creative)
    eta = beta[creative, 0] + np.einsum("ij,ij->i", X, beta[creative, 1:])
    prob = 1.0 / (1.0 + np.exp(-eta))
    y = (rng.random(n) < prob).astype(float)
    fold = rng.integers(0, n_folds, size=n)
    oracle = LocalOracle.from_arrays(X, y, creative, fold, n_creatives=K, n_folds=n_folds, n_blocks=2)
    rates = np.array([prob[creative == c].mean() for c in range(K)])
    return st, oracle, dict(X=X, y=y, creative=creative, fold=fold, rates=rates, beta=beta)


def oof_calibration(res, d, K):
    """Per creative: (mean out-of-fold predicted - observed response), in points, from the
    fold models of a ``CVResult`` (each scored on the fold it did not see)."""
    obs, pred, n = np.zeros(K), np.zeros(K), np.zeros(K)
    for f, fit in enumerate(res.fold_fits):
        m = d["fold"] == f
        X = np.column_stack([np.ones(m.sum()), d["X"][m]])
        c = d["creative"][m]
        p = 1.0 / (1.0 + np.exp(-np.einsum("ij,ij->i", X, fit.beta[c])))
        np.add.at(obs, c, d["y"][m])
        np.add.at(pred, c, p)
        np.add.at(n, c, 1)
    return 100 * (pred - obs) / n
