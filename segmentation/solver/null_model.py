"""The null model and lambda_max: the smallest lambda at which every creative is fused.

Null model (0 <= alpha < 1): every delta_c = 0 and, when alpha > 0, every penalised gamma_j is
zero except its intercept, so a penalised segment predicts its pooled response rate; with
alpha = 0, gamma_j is the unpenalised logistic fit to the segment's pooled rows. A free
segment's creative is always its own unpenalised logistic fit. This is the solution at
lambda = inf (the penalised blocks become the constraint "zero"), fitted by the same proximal
Newton solver with lam = inf (``FusedGroupPenalty`` treats inf as that limit).

lambda_max. Let g_c = dL/dbeta_c at the null fit. In theta space the KKT conditions at the
null point theta0 are, for penalised segments j (free segments hold by the fit itself):

- delta_c = 0:  ||dL/ddelta_c||_2 = ||g_c||_2 <= lam (1-alpha)/n_j;
- gamma_j[k] = 0, k >= 1 (alpha > 0):  |dL/dgamma_j[k]| = |sum_{c in j} g_c[k]| <= lam alpha;
- gamma_j[0] unpenalised:  sum_{c in j} g_c[0] = 0 (holds at the null fit);
- alpha = 0: gamma_j unpenalised, sum_{c in j} g_c = 0 (holds at the null fit).

theta0 stays optimal for every lam >= lambda_max and for no smaller lam (at a smaller lam
one of the inequalities fails, and the null point is then not a solution), with

    lambda_max = max( max_{c penalised} n_j ||g_c||_2 / (1 - alpha),
                      max_{j penalised} ||sum_{c in j} g_c[1:]||_inf / alpha )

(the second term only when alpha > 0). For alpha = 1 delta is unpenalised, no lambda fuses
any creative and lambda_max is undefined (ValueError).

With penalty factors (``PenaltyWeights``: u_c on delta_c, v_jk on gamma_j[k]) each term is
divided by its factor; a block with factor inf is zero at every lambda and a block with factor
0 is never penalised, so neither bounds lambda_max.
"""
from __future__ import annotations

import numpy as np

from segmentation.solver.prox_newton import FitResult, fit
from segmentation.solver.structure import SegmentStructure


def lambda_max(structure: SegmentStructure, alpha: float, grad_at_null: np.ndarray,
               weights=None) -> float:
    """Smallest lambda at which the null model satisfies the KKT conditions (module docstring).

    grad_at_null: (K, p) gradient of the mean negative log-likelihood w.r.t. beta at the null
    fit (``FitResult.grad`` of ``fit_null``); ``weights``: the ``PenaltyWeights`` of the fit.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"lambda_max needs 0 <= alpha < 1 (alpha = 1 leaves delta unpenalised, "
                         f"so no lambda fuses a creative); got alpha={alpha}")
    g = np.asarray(grad_at_null, dtype=np.float64)
    seg = structure.segment_index
    pen_seg = structure.penalized
    pen_cr = pen_seg[seg]
    sizes = structure.sizes.astype(float)
    u = np.ones(len(seg)) if weights is None else np.asarray(weights.delta, float)
    v = np.ones((structure.n_segments, g.shape[1])) if weights is None else np.asarray(weights.gamma, float)
    out = 0.0
    bound = pen_cr & (u > 0) & np.isfinite(u)
    if np.any(bound):
        out = max(out, float(np.max(sizes[seg][bound] * np.linalg.norm(g[bound], axis=1) / u[bound]))
                  / (1.0 - alpha))
    if alpha > 0 and g.shape[1] > 1:
        G = np.zeros((structure.n_segments, g.shape[1]))
        np.add.at(G, seg, g)
        vb = v[:, 1:]
        ok = pen_seg[:, None] & (vb > 0) & np.isfinite(vb)
        if np.any(ok):
            out = max(out, float(np.max(np.abs(G[:, 1:])[ok] / vb[ok])) / alpha)
    return out


def fit_null(oracle, structure: SegmentStructure, alpha: float, *, include=None,
             tol: float = 1e-8, max_iter: int = 50, label: str = "") -> tuple[FitResult, float]:
    """Fit the null model (lam = inf) and return (its FitResult, lambda_max).

    The FitResult has lam = inf; it is also the solution for every finite lam >= lambda_max
    and a natural warm start for the first lambda of a path.
    """
    if not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"the null model needs 0 <= alpha < 1; got alpha={alpha}")
    res = fit(oracle, structure, np.inf, alpha, include=include, tol=tol, max_iter=max_iter,
              label=label or "null model")
    return res, lambda_max(structure, alpha, res.grad)
