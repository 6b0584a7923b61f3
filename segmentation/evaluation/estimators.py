"""Off-policy estimators as ratios of per-user totals, with user-clustered confidence intervals.

Pure numpy. Every quantity reported by the evaluation is a smooth function of *ratios of
sums over users*

    theta = sum_u a . v_u / sum_u b . v_u

where v_u (length d) is the sum over user u's exposure rows of the per-row terms (see
``policies.row_terms``), and a, b are fixed coefficient vectors over those terms. Examples
(per-row terms for one policy pi, logged creative a_i with propensity p_i, response y_i,
direct model q_ik = predicted P(y=1 | x_i, creative k)):

- IPW:   w_i y_i over n_i = 1               (w_i = pi(a_i | x_i) / p_i)
- SNIPW: w_i y_i over w_i                   (self-normalised, Hajek)
- DR:    sum_k pi(k|x_i) q_ik + w_i (y_i - q_{i a_i})   over n_i = 1
- lift of pi over pi': the difference of two such ratios (paired: the same users, so the
  per-user terms are differenced before the variance is taken);
- the share of personalized's lift that segment recoups: (V_seg - V_rand) / (V_pers - V_rand).

Rows of the same user are correlated (same covariates, same policy decision, possibly the same
latent taste), so the variance is *clustered by user*: the influence of user u on a ratio is
phi_u = (a - theta b) . v_u / (b . S) with S = sum_u v_u, and a smooth function f of several
ratios has phi_u = sum_i df/dtheta_i phi_iu (delta method). The variance is the between-user
variance U / (U - 1) sum_u phi_u^2 (the phi_u sum to zero), which is a quadratic form in the
second-moment matrix Q = sum_u v_u v_u': Var = U / (U - 1) g' Q g with g the combined
coefficient vector. So the data only has to deliver (U, S, Q): O(d^2) numbers whatever the
number of rows, which is what the Spark side aggregates. 95% intervals are estimate
+- 1.96 se (normal approximation, conditional on the cross-fitted policies and direct model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of the per-user term vectors: U users, S = sum v_u, Q = sum v_u v_u'."""

    n_users: int
    S: np.ndarray          # (d,)
    Q: np.ndarray          # (d, d)
    names: tuple[str, ...]

    @classmethod
    def from_user_totals(cls, V: np.ndarray, names: Sequence[str]) -> "Moments":
        """Moments of a (U, d) matrix of per-user totals (the pure numpy path)."""
        V = np.asarray(V, dtype=np.float64)
        if V.ndim != 2 or V.shape[1] != len(names):
            raise ValueError(f"V must be (U, {len(names)}); got {V.shape}")
        return cls(V.shape[0], V.sum(axis=0), V.T @ V, tuple(names))

    @classmethod
    def from_rows(cls, T: np.ndarray, users: np.ndarray, names: Sequence[str]) -> "Moments":
        """Aggregate per-row terms (n, d) to per-user totals first (rows of one user summed)."""
        T = np.asarray(T, dtype=np.float64)
        _, inv = np.unique(np.asarray(users), return_inverse=True)
        V = np.zeros((inv.max() + 1 if len(inv) else 0, T.shape[1]))
        np.add.at(V, inv.reshape(-1), T)
        return cls.from_user_totals(V, names)

    def __add__(self, other: "Moments") -> "Moments":
        if self.names != other.names:
            raise ValueError("cannot add moments of different term layouts")
        return Moments(self.n_users + other.n_users, self.S + other.S, self.Q + other.Q, self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def vector(self, coefs: Mapping[str, float]) -> np.ndarray:
        """Coefficient vector over the terms from ``{term name: coefficient}``."""
        out = np.zeros(len(self.names))
        for k, c in coefs.items():
            out[self.index(k)] += float(c)
        return out


@dataclass(frozen=True)
class Ratio:
    """theta = sum_u num . v_u / sum_u den . v_u, with num/den as {term name: coefficient}."""

    num: Mapping[str, float]
    den: Mapping[str, float]


@dataclass
class Estimate:
    """A point estimate with its user-clustered standard error and 95% interval."""

    estimate: float
    se: float
    ci_low: float
    ci_high: float

    @classmethod
    def normal(cls, est: float, se: float) -> "Estimate":
        return cls(float(est), float(se), float(est - Z95 * se), float(est + Z95 * se))

    def covers(self, value: float) -> bool:
        return self.ci_low <= value <= self.ci_high

    def to_dict(self) -> dict:
        return {"estimate": _f(self.estimate), "se": _f(self.se),
                "ci_low": _f(self.ci_low), "ci_high": _f(self.ci_high)}


def _f(x: float):
    x = float(x)
    return x if np.isfinite(x) else None


def ratio_parts(m: Moments, ratios: Sequence[Ratio]) -> tuple[np.ndarray, np.ndarray]:
    """(theta (r,), G (r, d)) with the influence of user u on ratio i equal to G[i] . v_u."""
    thetas = np.empty(len(ratios))
    G = np.zeros((len(ratios), len(m.names)))
    for i, r in enumerate(ratios):
        a, b = m.vector(r.num), m.vector(r.den)
        den = float(b @ m.S)
        if den == 0.0:
            thetas[i] = np.nan
            G[i] = np.nan
            continue
        thetas[i] = float(a @ m.S) / den
        G[i] = (a - thetas[i] * b) / den
    return thetas, G


def clustered_variance(m: Moments, g: np.ndarray) -> float:
    """U / (U - 1) sum_u (g . v_u)^2 = U / (U - 1) g' Q g: the between-user variance of an
    estimate whose per-user influence is g . v_u (these sum to zero by construction)."""
    if m.n_users < 2 or not np.all(np.isfinite(g)):
        return np.nan
    q = float(g @ m.Q @ g)
    return max(q, 0.0) * m.n_users / (m.n_users - 1)


def delta_estimate(m: Moments, ratios: Sequence[Ratio],
                   f: Callable[[np.ndarray], float],
                   grad: Callable[[np.ndarray], np.ndarray]) -> Estimate:
    """f(theta_1..theta_r) with a delta-method, user-clustered standard error."""
    thetas, G = ratio_parts(m, ratios)
    if not np.all(np.isfinite(thetas)):
        return Estimate(np.nan, np.nan, np.nan, np.nan)
    est = float(f(thetas))
    g = np.asarray(grad(thetas), dtype=float) @ G
    return Estimate.normal(est, np.sqrt(clustered_variance(m, g)))


def ratio_estimate(m: Moments, r: Ratio) -> Estimate:
    """One ratio of per-user sums with its clustered standard error."""
    return delta_estimate(m, [r], lambda t: t[0], lambda t: np.array([1.0]))


def difference_estimate(m: Moments, r1: Ratio, r2: Ratio) -> Estimate:
    """theta_1 - theta_2 on the same users (paired: per-user influences are differenced)."""
    return delta_estimate(m, [r1, r2], lambda t: t[0] - t[1], lambda t: np.array([1.0, -1.0]))


def share_estimate(m: Moments, seg: Ratio, pers: Ratio, base: Ratio) -> Estimate:
    """(theta_seg - theta_base) / (theta_pers - theta_base): the share of the ceiling's lift
    over the baseline that ``seg`` recoups, with a delta-method clustered interval."""
    def f(t):
        return (t[0] - t[2]) / (t[1] - t[2])

    def grad(t):
        L = t[1] - t[2]
        Ls = t[0] - t[2]
        return np.array([1.0 / L, -Ls / L**2, -1.0 / L + Ls / L**2])

    return delta_estimate(m, [seg, pers, base], f, grad)


# ---- the three value estimators, as ratios of named per-row terms ------------------------------
ESTIMATORS = ("ipw", "snipw", "dr")


def value_ratio(policy: str, estimator: str) -> Ratio:
    """The ratio defining ``estimator``'s estimate of ``policy``'s value (response rate per
    exposure); term names follow ``policies.row_terms``: ``n``, ``ipw:P``, ``w:P``, ``dr:P``."""
    if estimator == "ipw":
        return Ratio({f"ipw:{policy}": 1.0}, {"n": 1.0})
    if estimator == "snipw":
        return Ratio({f"ipw:{policy}": 1.0}, {f"w:{policy}": 1.0})
    if estimator == "dr":
        return Ratio({f"dr:{policy}": 1.0}, {"n": 1.0})
    raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")


# ---- design checks ----------------------------------------------------------------------------
def share_check(counts: Sequence[float], expected_shares: Sequence[float] | None = None,
                *, max_rel_dev: float = 0.05, alpha: float = 1e-3) -> dict:
    """Compare the observed creative counts with the declared design (uniform by default).

    Returns chi-square statistic and p-value, the largest relative deviation
    |observed share / expected share - 1| and a warning string (or None) when the shares are
    both significantly (p < ``alpha``) and materially (max relative deviation > ``max_rel_dev``)
    different from the design: IPW with empirical shares then assumes a design that was not run.
    """
    counts = np.asarray(counts, dtype=float)
    K = len(counts)
    exp = np.full(K, 1.0 / K) if expected_shares is None else np.asarray(expected_shares, float)
    exp = exp / exp.sum()
    n = counts.sum()
    expected = n * exp
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = float(np.sum((counts - expected) ** 2 / expected))
        rel = np.abs(counts / expected - 1.0)
    p = float(stats.chi2.sf(chi2, K - 1)) if K > 1 else 1.0
    worst = int(np.nanargmax(rel)) if K else 0
    out = {"chi2": chi2, "df": K - 1, "p_value": p, "max_rel_deviation": float(np.nanmax(rel)) if K else 0.0,
           "worst_index": worst, "warning": None}
    if p < alpha and out["max_rel_deviation"] > max_rel_dev:
        out["warning"] = (f"observed creative shares differ from the declared design (chi-square "
                          f"{chi2:.1f} on {K - 1} df, p={p:.2g}; the largest relative deviation is "
                          f"{out['max_rel_deviation']:.1%}). The evaluation uses the empirical shares "
                          "as propensities, which is right only if creatives were assigned at random "
                          "independently of the covariates; otherwise give data.propensity_col with "
                          "the logged assignment probabilities")
    return out


def propensity_balance(inv_p_sum: Sequence[float], inv_p2_sum: Sequence[float], n_rows: float,
                       *, max_rel_dev: float = 0.05, z: float = 4.0) -> dict:
    """Check logged propensities: for every creative k, mean over rows of 1{a_i = k} / p_i has
    expectation 1 under the logged design. ``inv_p_sum[k]`` = sum of 1/p_i over rows shown k,
    ``inv_p2_sum[k]`` = sum of 1/p_i^2 over them. Warns when a creative's balance is more than
    ``max_rel_dev`` away from 1 and more than ``z`` standard errors away."""
    s1 = np.asarray(inv_p_sum, float)
    s2 = np.asarray(inv_p2_sum, float)
    n = float(n_rows)
    bal = s1 / n
    se = np.sqrt(np.maximum(s2 / n - bal**2, 0.0) / n)
    dev = np.abs(bal - 1.0)
    bad = (dev > max_rel_dev) & (dev > z * np.maximum(se, 1e-300))
    out = {"balance": bal.tolist(), "se": se.tolist(), "warning": None}
    if np.any(bad):
        k = int(np.argmax(np.where(bad, dev, -1)))
        out["warning"] = (f"logged propensities look inconsistent with the observed assignments: "
                          f"for creative #{k} the mean of 1{{shown}}/propensity is {bal[k]:.3f} "
                          f"(expected 1, se {se[k]:.3f})")
        out["worst_index"] = k
    return out
