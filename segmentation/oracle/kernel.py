"""The one numeric kernel both oracles run: sums of the Bernoulli negative log-likelihood,
its gradient and its curvature over one block of rows.

For model m (a K x p coefficient matrix beta^m) and a row i shown creative c with design x_i:

    eta_i   = beta^m_c . x_i
    l_i     = log(1 + exp(eta_i)) - y_i * eta_i                     (negative log-likelihood)
    d l_i / d beta^m_c      = (sigmoid(eta_i) - y_i) x_i
    d2 l_i / d beta^m_c^2   = sigmoid(eta_i) (1 - sigmoid(eta_i)) x_i x_i'

Row i contributes to model m when its fold f_i is in model m's training set
(``include[m, f_i]``). Several models (cross-validation folds, alphas) share one pass:
rows are sorted by (creative, fold), so each (c, f) slice is multiplied once by the
coefficients of every model it trains.

Returned values are *sums* (not means): the caller divides by the training row count.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from segmentation.data.blocks import DesignBlock


@dataclass
class BlockSums:
    loss: np.ndarray                 # (M,)
    grad: np.ndarray                 # (M, K, p)
    hess: np.ndarray | None          # (M, K, p, p)
    max_abs_eta: np.ndarray          # (M, K) largest |eta| on training rows
    heldout_loss: np.ndarray         # (M,) loss summed over rows *not* in the training set

    def __iadd__(self, other: "BlockSums") -> "BlockSums":
        self.loss += other.loss
        self.grad += other.grad
        if self.hess is not None:
            self.hess += other.hess
        np.maximum(self.max_abs_eta, other.max_abs_eta, out=self.max_abs_eta)
        self.heldout_loss += other.heldout_loss
        return self

    @classmethod
    def zeros(cls, M: int, K: int, p: int, curvature: bool) -> "BlockSums":
        return cls(
            loss=np.zeros(M),
            grad=np.zeros((M, K, p)),
            hess=np.zeros((M, K, p, p)) if curvature else None,
            max_abs_eta=np.zeros((M, K)),
            heldout_loss=np.zeros(M),
        )


def neg_loglik(eta: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise log(1 + e^eta) - y eta, stable for large |eta|."""
    return np.logaddexp(0.0, eta) - y * eta


def block_statistics(
    block: DesignBlock,
    betas: np.ndarray,
    include: np.ndarray,
    curvature: bool,
    heldout: bool = False,
) -> BlockSums:
    """Loss, gradient (and curvature) sums of every model over one block.

    betas: (M, K, p); include: (M, F) bool. ``heldout`` adds the loss of each model on the
    rows it does not train on (held-out deviance in cross-validation) at the cost of one
    more matrix-vector product per held-out slice.
    """
    betas = np.asarray(betas, dtype=np.float64)
    include = np.asarray(include, dtype=bool)
    M, K, p = betas.shape
    F = block.n_folds
    if block.X.shape[1] != p:
        raise ValueError(f"block has {block.X.shape[1]} columns, coefficients have {p}")
    if block.n_creatives != K or include.shape != (M, F):
        raise ValueError("block, coefficients and include mask disagree on K or F")
    out = BlockSums.zeros(M, K, p, curvature)
    for c in range(K):
        for f in range(F):
            rows = block.rows(c, f)
            if rows.stop == rows.start:
                continue
            X = block.X[rows]
            y = block.y[rows]
            train = np.flatnonzero(include[:, f])
            if train.size:
                eta = X @ betas[train, c, :].T                    # (n, M_f)
                out.loss[train] += neg_loglik(eta, y[:, None]).sum(axis=0)
                mu = expit(eta)
                out.grad[train, c, :] += (X.T @ (mu - y[:, None])).T
                out.max_abs_eta[train, c] = np.maximum(out.max_abs_eta[train, c],
                                                       np.abs(eta).max(axis=0))
                if curvature:
                    w = mu * (1.0 - mu)
                    for t, m in enumerate(train):
                        out.hess[m, c] += (X * w[:, t, None]).T @ X
            if heldout:
                test = np.flatnonzero(~include[:, f])
                if test.size:
                    eta = X @ betas[test, c, :].T
                    out.heldout_loss[test] += neg_loglik(eta, y[:, None]).sum(axis=0)
    return out
