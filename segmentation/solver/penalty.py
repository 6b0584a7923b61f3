"""The fused group-lasso penalty in theta = (gamma, delta) space and its proximal operator.

Variables (see ``structure.py`` for the notation):

- gamma: (m, p), one coefficient vector per segment;
- delta: (K, p), one deviation per creative;
- beta_c = gamma_{j(c)} + delta_c, with j(c) = ``segment_of[c]``.

For a penalised segment j (not free) with n_j creatives the penalty is

    P_j(gamma_j, delta) = lam * [ (1-alpha)/n_j * sum_{c in j} ||delta_c||_2
                                  + alpha * ||gamma_j[1:]||_1 ],

i.e. a group lasso on each deviation delta_c (intercept included: a creative whose delta is
zero is *fused* with its segment) and a lasso on the segment's covariate effects (the
intercept gamma_j[0] is never penalised). A free segment (control arm, one creative) has no
penalty on gamma_j and the constraint delta_c = 0 (indicator penalty), so its creative is an
unpenalised logistic model beta_c = gamma_j. P = sum_j P_j is separable over the blocks
gamma_j and delta_c, so its prox is computed block by block (``FusedGroupPenalty.prox``).

``lam = inf`` is allowed and means the limit lam -> inf: every penalised term with a positive
weight becomes the constraint "that block is zero" (the null model, see ``null_model.py``).
"""
from __future__ import annotations

import numpy as np

from segmentation.solver.structure import SegmentStructure


def to_beta(structure: SegmentStructure, gamma: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """beta_c = gamma_{segment_of[c]} + delta_c, shape (K, p).

    A fused creative (delta_c == 0) gets beta_c equal to gamma_j bit for bit (x + 0.0 == x).
    """
    return np.asarray(gamma)[structure.segment_index] + np.asarray(delta)


def theta_gradient(structure: SegmentStructure, grad_beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chain rule through beta = A theta: returns (g_gamma (m, p), g_delta (K, p)) with

        dL/dgamma_j = sum_{c in j} dL/dbeta_c,      dL/ddelta_c = dL/dbeta_c.
    """
    grad_beta = np.asarray(grad_beta, dtype=np.float64)
    g_gamma = np.zeros((structure.n_segments, grad_beta.shape[1]))
    np.add.at(g_gamma, structure.segment_index, grad_beta)
    return g_gamma, grad_beta.copy()


def _weight(lam: float, factor: np.ndarray) -> np.ndarray:
    """lam * factor with the convention inf * 0 = 0 (an unpenalised block stays free)."""
    factor = np.asarray(factor, dtype=np.float64)
    if np.isinf(lam):
        return np.where(factor > 0, np.inf, 0.0)
    return lam * factor


def soft_threshold(x: np.ndarray, w) -> np.ndarray:
    """Elementwise prox of w*|x|: sign(x) * max(|x| - w, 0) (exact zeros; w may be inf)."""
    return np.sign(x) * np.maximum(np.abs(x) - w, 0.0)


class FusedGroupPenalty:
    """P(gamma, delta) for a given structure, lam >= 0 (or inf) and 0 <= alpha <= 1.

    Block weights (zero for free segments):

        w_gamma[j] = lam * alpha                (on gamma_j[1:], L1)
        w_delta[c] = lam * (1 - alpha) / n_j(c) (on delta_c, L2 group)

    Free creatives carry the constraint delta_c = 0 (``free_creative`` mask).
    """

    def __init__(self, structure: SegmentStructure, lam: float, alpha: float):
        lam = float(lam)
        alpha = float(alpha)
        if not (lam >= 0):
            raise ValueError(f"lambda must be >= 0, got {lam}")
        if not (0.0 <= alpha <= 1.0):
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.structure = structure
        self.lam = lam
        self.alpha = alpha
        pen = structure.penalized
        seg = structure.segment_index
        sizes = structure.sizes.astype(float)
        self.penalized_segment = pen
        self.free_creative = ~pen[seg]
        self.w_gamma = np.where(pen, _weight(lam, np.full(len(pen), alpha)), 0.0)
        self.w_delta = np.where(pen[seg], _weight(lam, (1.0 - alpha) / sizes[seg]), 0.0)

    def value(self, gamma: np.ndarray, delta: np.ndarray) -> float:
        """P(gamma, delta) = sum_c w_delta[c] ||delta_c||_2 + sum_j w_gamma[j] ||gamma_j[1:]||_1,
        plus the indicator of {delta_c = 0 for free creatives} (and of the zero blocks when
        lam = inf); returns inf outside that set."""
        dn = np.linalg.norm(delta, axis=1)
        g1 = np.abs(np.asarray(gamma)[:, 1:]).sum(axis=1)
        if np.any(dn[self.free_creative] != 0):
            return np.inf
        total = 0.0
        for w, v in ((self.w_delta, dn), (self.w_gamma, g1)):
            inf_w = np.isinf(w)
            if np.any(v[inf_w] != 0):
                return np.inf
            total += float(np.dot(w[~inf_w], v[~inf_w]))
        return total

    def prox(self, gamma: np.ndarray, delta: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact prox_{step * P}(gamma, delta) = argmin_theta' P(theta') + ||theta' - theta||^2 / (2 step):

        - gamma_j[0] unchanged; gamma_j[1:] <- soft_threshold(gamma_j[1:], step * w_gamma[j]);
        - delta_c <- max(0, 1 - step * w_delta[c] / ||delta_c||) * delta_c  (block soft threshold);
        - free segments: gamma_j unchanged, delta_c <- 0 (projection onto the constraint).
        """
        gamma = np.array(gamma, dtype=np.float64, copy=True)
        delta = np.array(delta, dtype=np.float64, copy=True)
        gamma[:, 1:] = soft_threshold(gamma[:, 1:], step * self.w_gamma[:, None])
        norms = np.linalg.norm(delta, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            shrink = np.where(norms > 0, np.maximum(0.0, 1.0 - step * self.w_delta / norms), 0.0)
        shrink[self.free_creative] = 0.0
        delta *= shrink[:, None]
        return gamma, delta

    def project_feasible(self, gamma: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map any (gamma, delta) into dom P keeping beta where possible: a free creative's delta
        moves into its gamma; with lam = inf the constrained blocks are zeroed."""
        gamma = np.array(gamma, dtype=np.float64, copy=True)
        delta = np.array(delta, dtype=np.float64, copy=True)
        seg = self.structure.segment_index
        for c in np.flatnonzero(self.free_creative):
            gamma[seg[c]] += delta[c]
            delta[c] = 0.0
        delta[np.isinf(self.w_delta)] = 0.0
        gamma[np.isinf(self.w_gamma), 1:] = 0.0
        return gamma, delta
