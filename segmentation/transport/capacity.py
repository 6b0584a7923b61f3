"""Capacity limits: shares -> integer head counts, and the feasibility checks.

With n users and share limits lo_t <= share_t <= hi_t, the head-count bounds are
``L_t = ceil(lo_t * n)`` and ``U_t = floor(hi_t * n)`` (a 1e-9 tolerance absorbs decimal
shares such as 0.3 * 10). The transportation polytope
{x >= 0 : sum_t x_it = 1, L_t <= sum_i x_it <= U_t} has integral vertices (its constraint matrix
is totally unimodular), so with integer bounds the LP optimum is attained by a one-treatment-per-user
assignment. Feasible iff L_t <= U_t for all t and sum_t L_t <= n <= sum_t U_t.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_EPS = 1e-9


@dataclass(frozen=True)
class Capacities:
    """Integer head-count bounds per offered treatment (arrays of length K)."""

    lower: np.ndarray
    upper: np.ndarray
    n: int

    @property
    def binding(self) -> bool:
        """False when every head count in [0, n] is allowed (plain argmax is optimal)."""
        return bool(np.any(self.lower > 0) or np.any(self.upper < self.n))


def check_shares(treatments: list[str], min_share: dict[str, float] | None,
                 max_share: dict[str, float] | None, key: str = "transport") -> None:
    """Share-level checks (before the user count is known). Raises ValueError naming the key."""
    min_share, max_share = min_share or {}, max_share or {}
    for name, d in (("min_share", min_share), ("max_share", max_share)):
        for t, s in d.items():
            if not (0.0 <= float(s) <= 1.0) or math.isnan(float(s)):
                raise ValueError(f"{key}.{name}.{t}: a share must lie in [0, 1] (got {s})")
    for t in min_share:
        if float(min_share[t]) > float(max_share.get(t, 1.0)) + _EPS:
            raise ValueError(f"{key}.min_share.{t} = {min_share[t]} exceeds {key}.max_share.{t} = "
                             f"{max_share.get(t, 1.0)}")
    offered = set(treatments)
    lo = sum(float(min_share.get(t, 0.0)) for t in offered)
    hi = sum(float(max_share.get(t, 1.0)) for t in offered)
    if lo > 1.0 + _EPS:
        raise ValueError(f"{key}.min_share: the minimum shares of the offered treatments sum to "
                         f"{lo:g} > 1: no assignment can meet them")
    if hi < 1.0 - _EPS:
        raise ValueError(f"{key}.max_share: the maximum shares of the offered treatments "
                         f"{sorted(offered)} sum to {hi:g} < 1: some users could not be assigned")


def capacities(treatments: list[str], n: int, min_share: dict[str, float] | None = None,
               max_share: dict[str, float] | None = None, key: str = "transport") -> Capacities:
    """Integer bounds for ``n`` users over the offered ``treatments`` (in that order)."""
    check_shares(treatments, min_share, max_share, key)
    min_share, max_share = min_share or {}, max_share or {}
    lower = np.array([math.ceil(float(min_share.get(t, 0.0)) * n - _EPS) for t in treatments], dtype=np.int64)
    upper = np.array([math.floor(float(max_share.get(t, 1.0)) * n + _EPS) for t in treatments], dtype=np.int64)
    lower = np.maximum(lower, 0)
    upper = np.minimum(upper, n)
    if np.any(lower > upper):
        t = treatments[int(np.argmax(lower > upper))]
        raise ValueError(f"{key}.min_share.{t}/{key}.max_share.{t}: with {n} users no whole head count "
                         f"lies between ceil(min_share * n) = {lower[treatments.index(t)]} and "
                         f"floor(max_share * n) = {upper[treatments.index(t)]}")
    if lower.sum() > n:
        raise ValueError(f"{key}.min_share: with {n} users the minimum head counts (rounded up) sum "
                         f"to {int(lower.sum())} > {n}")
    if upper.sum() < n:
        raise ValueError(f"{key}.max_share: with {n} users the maximum head counts (rounded down) "
                         f"sum to {int(upper.sum())} < {n}")
    return Capacities(lower=lower, upper=upper, n=n)
