"""Optimality measures for  min_theta F(theta) = L(A theta) + P(theta),  theta = (gamma, delta).

Prox-gradient (KKT) residual. theta* is optimal iff it is a fixed point of the prox-gradient
map with any step s > 0:  theta* = prox_{sP}(theta* - s grad_theta L(theta*)). We use s = 1:

    R(theta) = || theta - prox_P(theta - grad_theta L(theta)) ||_2

(Frobenius norm over all gamma and delta entries). R = 0 exactly at a solution, it is
continuous, and it is the quantity the solver's tolerance ``tol`` refers to. It is in
coefficient units scaled by the curvature of the *mean* log-likelihood.

Per-block KKT violations (distance of -grad to the block's subdifferential, Euclidean):

- gamma_j, penalised segment, w = lam*alpha, G = sum_{c in j} dL/dbeta_c:
      intercept: |G[0]|;  k >= 1: |G[k] + w sign(gamma_j[k])| if gamma_j[k] != 0,
      else max(|G[k]| - w, 0);   the block's violation is the 2-norm over k.
- gamma_j, free segment: ||G||_2.
- delta_c, penalised, w = lam*(1-alpha)/n_j, g = dL/dbeta_c:
      ||g + w delta_c/||delta_c|| ||_2 if delta_c != 0, else max(||g||_2 - w, 0).
- delta_c, free creative: ||delta_c||_2 (the constraint delta_c = 0; gradient irrelevant).

With lam = inf a block with infinite weight has violation 0 if it is zero (inf otherwise).
"""
from __future__ import annotations

import numpy as np

from segmentation.solver.penalty import FusedGroupPenalty, theta_gradient


def prox_grad_residual(penalty: FusedGroupPenalty, gamma: np.ndarray, delta: np.ndarray,
                       g_gamma: np.ndarray, g_delta: np.ndarray) -> float:
    """|| theta - prox_P(theta - grad) ||_2 for a gradient already in theta space."""
    pg, pd = penalty.prox(gamma - g_gamma, delta - g_delta, 1.0)
    return float(np.sqrt(np.sum((gamma - pg) ** 2) + np.sum((delta - pd) ** 2)))


def kkt_residual(penalty: FusedGroupPenalty, gamma: np.ndarray, delta: np.ndarray,
                 grad_beta: np.ndarray) -> float:
    """R(theta) = ||theta - prox_P(theta - grad_theta L)||_2 from the beta-gradient (K, p)."""
    g_gamma, g_delta = theta_gradient(penalty.structure, grad_beta)
    return prox_grad_residual(penalty, gamma, delta, g_gamma, g_delta)


def kkt_violations(penalty: FusedGroupPenalty, gamma: np.ndarray, delta: np.ndarray,
                   grad_beta: np.ndarray) -> dict[str, np.ndarray]:
    """Per-block KKT violations: {"gamma": (m,), "delta": (K,)} (see the module docstring)."""
    g_gamma, g_delta = theta_gradient(penalty.structure, grad_beta)
    m = g_gamma.shape[0]
    out_g = np.zeros(m)
    for j in range(m):
        G = g_gamma[j]
        if not penalty.penalized_segment[j]:
            out_g[j] = np.linalg.norm(G)
            continue
        w = penalty.gamma_weights(j, G.shape[0])[1:]
        v = np.empty_like(G)
        v[0] = abs(G[0])
        gj = gamma[j, 1:]
        nz = gj != 0
        with np.errstate(invalid="ignore"):
            on = np.where(np.isfinite(w), np.abs(G[1:] + np.where(np.isfinite(w), w, 0.0) * np.sign(gj)), np.inf)
        rest = np.where(nz, on, np.maximum(np.abs(G[1:]) - w, 0.0))
        v[1:] = rest
        out_g[j] = np.linalg.norm(v)
    K = g_delta.shape[0]
    out_d = np.zeros(K)
    for c in range(K):
        d = delta[c]
        nd = np.linalg.norm(d)
        if penalty.free_creative[c]:
            out_d[c] = nd
            continue
        w = penalty.w_delta[c]
        if nd > 0:
            out_d[c] = np.linalg.norm(g_delta[c] + w * d / nd) if np.isfinite(w) else np.inf
        else:
            out_d[c] = max(np.linalg.norm(g_delta[c]) - w, 0.0)
    return {"gamma": out_g, "delta": out_d}
