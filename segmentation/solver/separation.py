"""Detecting (quasi-)separation: directions in which the penalised likelihood keeps decreasing
without bound, so the coefficients diverge and no finite solution exists.

Which directions the penalty leaves unbounded (w_delta, w_gamma as in ``penalty.py``):

- gamma_j[0] (a segment's intercept) is never penalised: if every creative of segment j
  with training rows has no positive response (or only positives), gamma_j[0] -> -inf (+inf).
- delta_c is unpenalised when w_delta[c] = 0 (lam = 0 or alpha = 1); a free creative's gamma is
  unpenalised: a creative with no positives (or only positives) then has no finite intercept.
- covariate directions: unbounded when lam = 0, alpha = 0 (gamma unpenalised: separation of a
  segment's pooled rows), alpha = 1 (delta unpenalised: separation of one creative's rows), or
  in a free segment. Otherwise every direction but gamma_j[0] is penalised, and the fit stays
  finite (e.g. a creative with no positives inside a segment with others, lam > 0, alpha < 1).

The intercept cases are caught before any data pass from the training counts and positives
(``check_degenerate_responses``). Covariate separation is caught while fitting from the largest
|linear predictor| per creative (``SeparationMonitor``): a creative is *saturated* when
max |eta| > ``ETA_SATURATED`` (fitted probabilities numerically 0 or 1); if, in a direction the
penalty leaves unbounded, it stays saturated with |eta| growing at a non-decreasing pace while
the objective decreases for ``PATIENCE`` accepted Newton steps, the coefficients are diverging.

Slow divergence. When the separating rows sit far from the boundary (e.g. a binary covariate
that predicts one creative's response perfectly), |eta| grows by about one per Newton step
and the gradient, ~exp(-|eta|), falls below the tolerance near |eta| ~ 14, before saturation
at 30. So at a point with residual <= tol the solver asks ``keep_going``: if an unboundable
creative has max |eta| > ``SLOW_ETA`` and the Newton step still moves its coefficients by more
than ``SLOW_STEP`` (relative), convergence is not declared; if that step then fails to shrink
(ratio >= 1/2, where a converging Newton iteration shrinks it quadratically) for ``PATIENCE``
such iterations, it is divergence and SeparationError is raised.
"""
from __future__ import annotations

import numpy as np

from segmentation.errors import SeparationError
from segmentation.solver.penalty import FusedGroupPenalty

ETA_SATURATED = 30.0
ETA_GROWTH = 0.5
PATIENCE = 3
SLOW_ETA = 10.0
SLOW_STEP = 1e-3


def _names(structure, idx) -> str:
    return ", ".join(repr(structure.creatives[c]) for c in idx)


def _advice(penalty: FusedGroupPenalty, free: bool) -> str:
    tips = []
    if penalty.lam == 0:
        tips.append("raise lambda above 0 (lambda = 0 leaves every coefficient unpenalised)")
    if penalty.alpha == 0:
        tips.append("use alpha > 0 (alpha = 0 leaves the segment coefficients gamma unpenalised)")
    if penalty.alpha == 1:
        tips.append("use alpha < 1 (alpha = 1 leaves each creative's deviation delta unpenalised)")
    if free:
        tips.append("note the control arm is a free, unpenalised segment")
    tips.append(("or " if tips else "")
                + "drop the covariate that predicts the response perfectly (with rare responses "
                "this is often a categorical level or a covariate range in which these creatives "
                "have no positive response at all)")
    return "; ".join(tips)


def check_degenerate_responses(penalty: FusedGroupPenalty, counts: np.ndarray,
                               positives: np.ndarray, label: str = "") -> None:
    """Raise SeparationError if some intercept direction is unbounded (module docstring).

    counts, positives: (K,) training rows and positive responses per creative.
    """
    st = penalty.structure
    counts = np.asarray(counts, dtype=float)
    positives = np.asarray(positives, dtype=float)
    has_rows = counts > 0
    none = has_rows & (positives == 0)
    every = has_rows & (positives == counts)
    where = f" ({label})" if label else ""
    # creative level: an unpenalised delta_c[0] or a free creative's gamma
    unbounded = penalty.free_creative | (penalty.w_delta == 0)
    bad = np.flatnonzero(unbounded & (none | every))
    if bad.size:
        what = ["no positive responses" if none[c] else "only positive responses" for c in bad]
        detail = ", ".join(f"{st.creatives[c]!r} ({w})" for c, w in zip(bad, what))
        raise SeparationError(
            f"creative(s) {detail} in the training rows{where}: its intercept is not bounded by the "
            f"penalty (lambda={penalty.lam:g}, alpha={penalty.alpha:g}), so the fitted response "
            f"probability goes to 0 or 1 and there is no finite solution. Raise lambda above 0 "
            f"with alpha < 1 so the creative is fused with its segment, or drop the creative "
            f"from the data.")
    # segment level: gamma_j[0] is never penalised
    for j in range(st.n_segments):
        idx = st.creatives_of(j)
        idx = idx[has_rows[idx]]
        if idx.size and (np.all(none[idx]) or np.all(every[idx])):
            kind = "no positive responses" if np.all(none[idx]) else "only positive responses"
            raise SeparationError(
                f"every creative of segment {st.segments[j]!r} ({_names(st, idx)}) has {kind} in the "
                f"training rows{where}: the segment intercept is never penalised, so there is no "
                f"finite solution. Drop the segment (or its creatives) from the data, or add rows "
                f"with both responses.")


class SeparationMonitor:
    """Watches max |eta| per creative across accepted Newton iterates (module docstring)."""

    def __init__(self, penalty: FusedGroupPenalty, label: str = ""):
        self.penalty = penalty
        self.label = label
        K = penalty.structure.n_creatives
        lam, alpha = penalty.lam, penalty.alpha
        everywhere = lam == 0 or alpha == 0 or alpha == 1
        self.eligible = penalty.free_creative | everywhere
        self.streak = np.zeros(K, dtype=int)
        self.prev_eta: np.ndarray | None = None
        self.prev_obj = np.inf
        self.prev_growth = np.zeros(K)
        self.slow_streak = 0
        self.prev_slow_step: np.ndarray | None = None

    def candidates(self, max_abs_eta: np.ndarray, threshold: float = ETA_SATURATED) -> np.ndarray:
        """(K,) creatives with max |eta| > threshold in a direction the penalty may leave
        unbounded (an eligible creative, or a whole segment along its intercept)."""
        st = self.penalty.structure
        sat = np.asarray(max_abs_eta) > threshold
        elig = self.eligible.copy()
        for j in range(st.n_segments):           # the whole segment along gamma_j[0]
            idx = st.creatives_of(j)
            if np.all(sat[idx]):
                elig[idx] = True
        return sat & elig

    def update(self, objective: float, max_abs_eta: np.ndarray) -> None:
        """Record an accepted iterate; raise SeparationError once divergence is established.

        A creative's streak grows when it is saturated in an unboundable direction, its max
        |eta| grew by more than ETA_GROWTH and by at least half the previous growth (Newton
        converging to a finite point with a large |eta|, e.g. an outlying covariate value,
        shrinks these increments quadratically; diverging coefficients do not), and the
        objective decreased.
        """
        eta = np.asarray(max_abs_eta, dtype=float)
        growth = np.zeros_like(eta)
        if self.prev_eta is not None:
            growth = eta - self.prev_eta
            steady = (growth > ETA_GROWTH) & (growth >= 0.5 * self.prev_growth)
            growing = steady & self.candidates(eta)
            if objective < self.prev_obj:
                self.streak = np.where(growing, self.streak + 1, 0)
            else:
                self.streak[:] = 0
        self.prev_eta, self.prev_obj, self.prev_growth = eta, objective, growth
        bad = np.flatnonzero(self.streak >= PATIENCE)
        if bad.size:
            self.raise_for(bad, eta)

    def keep_going(self, max_abs_eta: np.ndarray, beta: np.ndarray, step: np.ndarray) -> bool:
        """At a point with residual <= tol: should the solver keep iterating (slow divergence
        suspected)? Raises SeparationError once the divergence is established."""
        eta = np.asarray(max_abs_eta, dtype=float)
        size = np.linalg.norm(step, axis=1)
        rel = size / (1.0 + np.linalg.norm(beta, axis=1))
        moving = self.candidates(eta, SLOW_ETA) & (rel > SLOW_STEP)
        if not np.any(moving):
            self.slow_streak, self.prev_slow_step = 0, None
            return False
        if self.prev_slow_step is not None and np.any(
                moving & (size >= 0.5 * self.prev_slow_step)):
            self.slow_streak += 1
        else:
            self.slow_streak = 1
        self.prev_slow_step = size
        if self.slow_streak >= PATIENCE:
            bad = np.flatnonzero(moving & (size >= 0.5 * self.prev_slow_step))
            self.raise_for(bad, eta)
        return True

    def raise_for(self, bad, eta) -> None:
        st = self.penalty.structure
        where = f" ({self.label})" if self.label else ""
        free = bool(np.any(self.penalty.free_creative[bad]))
        raise SeparationError(
            f"coefficients of creative(s) {_names(st, bad)}{where} diverge: the largest |linear "
            f"predictor| on their training rows reached {np.max(eta[bad]):.3g} (fitted probabilities "
            f"pushed to 0 or 1) and keeps growing while the objective decreases, so the data are "
            f"(quasi-)separable in a direction the penalty does not bound (lambda={self.penalty.lam:g}, "
            f"alpha={self.penalty.alpha:g}). To fix: {_advice(self.penalty, free)}.")
