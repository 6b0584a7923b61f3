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

Penalty factors (``PenaltyWeights``, glmnet's ``penalty.factor`` per block): a factor
u_c >= 0 multiplies the group term of delta_c and a factor v_jk >= 0 the L1 term of
gamma_j[k], k >= 1:

    P_j = lam * [ (1-alpha)/n_j * sum_{c in j} u_c ||delta_c||_2
                  + alpha * sum_{k >= 1} v_jk |gamma_j[k]| ].

Factor 0 leaves a block unpenalised; factor inf fixes it at zero (the constraint
"delta_c = 0", i.e. creative c fused, or "gamma_j[k] = 0"). The relaxed refit of
``selection/relax.py`` uses inf on the zero blocks of a selected pattern; an adaptive group
lasso uses u_c = 1/||delta_c^init||, v_jk = 1/|gamma_jk^init| from an initial fit.
"""
from __future__ import annotations

import numpy as np

from dataclasses import dataclass

from segmentation.solver.structure import SegmentStructure


@dataclass(frozen=True)
class PenaltyWeights:
    """Per-block penalty factors (module docstring): ``gamma`` (m, p), column 0 (intercept)
    ignored; ``delta`` (K,). Non-negative; inf fixes the block at zero."""

    gamma: np.ndarray
    delta: np.ndarray

    def __post_init__(self):
        g = np.array(self.gamma, dtype=np.float64)
        d = np.array(self.delta, dtype=np.float64).reshape(-1)
        if g.ndim != 2:
            raise ValueError(f"gamma weights must be (m, p); got shape {g.shape}")
        if np.any(np.isnan(g)) or np.any(g < 0) or np.any(np.isnan(d)) or np.any(d < 0):
            raise ValueError("penalty factors must be >= 0 (inf allowed, nan not)")
        g[:, 0] = 0.0
        object.__setattr__(self, "gamma", g)
        object.__setattr__(self, "delta", d)

    @classmethod
    def ones(cls, m: int, K: int, p: int) -> "PenaltyWeights":
        return cls(np.ones((m, p)), np.ones(K))

    @classmethod
    def pattern(cls, gamma: np.ndarray, delta: np.ndarray, active: float = 1.0) -> "PenaltyWeights":
        """Fix the zero blocks of (gamma, delta) at zero (factor inf: fused creatives stay
        fused, zero coefficients of gamma stay zero); factor ``active`` on the others."""
        gz = np.asarray(gamma) == 0
        dz = ~np.any(np.asarray(delta) != 0, axis=1)
        return cls(np.where(gz, np.inf, active), np.where(dz, np.inf, active))

    @classmethod
    def adaptive(cls, gamma: np.ndarray, delta: np.ndarray, power: float = 1.0) -> "PenaltyWeights":
        """Adaptive group lasso factors from an initial fit: u_c = ||delta_c||^-power,
        v_jk = |gamma_jk|^-power (inf where the initial block is zero: it stays zero)."""
        with np.errstate(divide="ignore"):
            g = np.abs(np.asarray(gamma, float)) ** -float(power)
            d = np.linalg.norm(np.asarray(delta, float), axis=1) ** -float(power)
        return cls(g, d)


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
    """lam * factor with the convention inf * 0 = 0 (an unpenalised block stays free) and
    0 * inf = inf (a block fixed at zero stays fixed whatever lam)."""
    factor = np.asarray(factor, dtype=np.float64)
    if np.isinf(lam):
        return np.where(factor > 0, np.inf, 0.0)
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(factor), np.inf, lam * factor)


def weighted_l1(w: np.ndarray, x: np.ndarray) -> float:
    """sum_k w_k |x_k| with 0 * inf = 0 (a zero coefficient costs nothing under any weight)."""
    a = np.abs(np.asarray(x, dtype=np.float64))
    nz = a != 0
    return float(np.sum(np.asarray(w, dtype=np.float64)[nz] * a[nz]))


def soft_threshold(x: np.ndarray, w) -> np.ndarray:
    """Elementwise prox of w*|x|: sign(x) * max(|x| - w, 0) (exact zeros; w may be inf)."""
    return np.sign(x) * np.maximum(np.abs(x) - w, 0.0)


class FusedGroupPenalty:
    """P(gamma, delta) for a given structure, lam >= 0 (or inf), 0 <= alpha <= 1 and optional
    penalty factors ``weights`` (``PenaltyWeights``; default all ones).

    Block weights (zero for free segments):

        w_gamma[j, k] = lam * alpha * v_jk                (k >= 1, L1; w_gamma[j, 0] = 0)
        w_delta[c]    = lam * (1 - alpha) / n_j(c) * u_c  (on delta_c, L2 group)

    Free creatives carry the constraint delta_c = 0 (``free_creative`` mask).
    """

    def __init__(self, structure: SegmentStructure, lam: float, alpha: float,
                 weights: PenaltyWeights | None = None):
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
        m, K = structure.n_segments, structure.n_creatives
        if weights is not None and (weights.gamma.shape[0] != m or weights.delta.shape != (K,)):
            raise ValueError(f"penalty weights must be gamma ({m}, p) and delta ({K},); got "
                             f"{weights.gamma.shape} and {weights.delta.shape}")
        self.weights = weights
        self.penalized_segment = pen
        self.free_creative = ~pen[seg]
        u = np.ones(K) if weights is None else weights.delta
        # w_gamma: (m,) base weight lam * alpha of each segment (before factors)
        self.w_gamma = np.where(pen, _weight(lam, np.full(m, alpha)), 0.0)
        self._w_gamma_full = None
        if weights is not None:
            wg = np.where(pen[:, None], _weight(lam, alpha * weights.gamma), 0.0)
            wg[:, 0] = 0.0
            self._w_gamma_full = wg
        self.w_delta = np.where(pen[seg], _weight(lam, (1.0 - alpha) / sizes[seg] * u), 0.0)

    def gamma_weight_matrix(self, p: int) -> np.ndarray:
        """(m, p) L1 weights w_gamma[j, k] (column 0, the intercept, is 0)."""
        if self._w_gamma_full is not None:
            if self._w_gamma_full.shape[1] != p:
                raise ValueError(f"penalty weights are for p = {self._w_gamma_full.shape[1]}, not {p}")
            return self._w_gamma_full
        out = np.repeat(self.w_gamma[:, None], p, axis=1)
        out[:, 0] = 0.0
        return out

    def gamma_weights(self, j: int, p: int) -> np.ndarray:
        """(p,) L1 weights of gamma_j (entry 0, the intercept, is 0)."""
        return self.gamma_weight_matrix(p)[j]

    def value(self, gamma: np.ndarray, delta: np.ndarray) -> float:
        """P(gamma, delta) = sum_c w_delta[c] ||delta_c||_2 + sum_j w_gamma[j] ||gamma_j[1:]||_1,
        plus the indicator of {delta_c = 0 for free creatives} (and of the zero blocks when
        lam = inf); returns inf outside that set."""
        dn = np.linalg.norm(delta, axis=1)
        ga = np.abs(np.asarray(gamma))
        if np.any(dn[self.free_creative] != 0):
            return np.inf
        wg = self.gamma_weight_matrix(ga.shape[1])
        total = 0.0
        for w, v in ((self.w_delta, dn), (wg, ga)):
            inf_w = np.isinf(w)
            if np.any(v[inf_w] != 0):
                return np.inf
            total += float(np.sum(w[~inf_w] * v[~inf_w]))
        return total

    def prox(self, gamma: np.ndarray, delta: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact prox_{step * P}(gamma, delta) = argmin_theta' P(theta') + ||theta' - theta||^2 / (2 step):

        - gamma_j[0] unchanged; gamma_j[k] <- soft_threshold(gamma_j[k], step * w_gamma[j, k]);
        - delta_c <- max(0, 1 - step * w_delta[c] / ||delta_c||) * delta_c  (block soft threshold);
        - free segments: gamma_j unchanged, delta_c <- 0 (projection onto the constraint).
        """
        gamma = np.array(gamma, dtype=np.float64, copy=True)
        delta = np.array(delta, dtype=np.float64, copy=True)
        gamma[:, 1:] = soft_threshold(gamma[:, 1:], step * self.gamma_weight_matrix(gamma.shape[1])[:, 1:])
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
        gamma[np.isinf(self.gamma_weight_matrix(gamma.shape[1]))] = 0.0
        return gamma, delta
