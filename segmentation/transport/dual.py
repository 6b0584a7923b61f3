"""Capacity-constrained assignment of users to K offered treatments, through its dual.

Primal (an optimal transport / transportation LP), x_it >= 0:

    max  sum_{i,t} v_it x_it   s.t.  sum_t x_it = 1 (every user),  L_t <= sum_i x_it <= U_t.

Dual, with one price p_t per treatment (p_t = alpha_t - beta_t for the multipliers of the upper
and lower capacity rows):

    D(p) = sum_i max_t (v_it - p_t) + sum_t c_t(p_t),   c_t(p) = U_t p if p >= 0 else L_t p,

convex and piecewise linear; min_p D(p) = the primal optimum (LP duality). Users take
argmax_t v_it - p_t; ``g_t = c_t'(p_t) - #{i takes t}`` is a subgradient, so the prices rise on
over-subscribed treatments and fall on under-subscribed ones.

The prices are found by a box-step cutting-plane method on D (Kelley's model
min_p max_j D(p_j) + g_j.(p - p_j) restricted to a box around the best point, a (K+1)-variable
LP solved on the driver). Several candidate price vectors are evaluated per pass over the users
(one round): the master LP's solutions in boxes of 1/8, 1 and 8 times the current half-width,
and a Newton point, the minimiser of the second-order model -counts.dp + dp'H dp/2 + c(p + dp)
where H (the Laplacian of the users' density at the indifference boundaries between pairs of
treatments) is read off the same pass's tie groups at delta = scale * 1e-2. Every point adds a
cut; the best becomes the centre and its radius the box (doubled after a step that achieved half
its predicted decrease, halved otherwise). The Newton point makes the rounds few on continuous
values (the dual is nearly smooth there); the cutting planes keep convergence on ties. Each
round costs one pass (``kernel.batch_rows`` per point), which also returns, for a ladder of
tolerances delta, the users grouped by candidate set A_i(delta) = {t : v_it - p_t >= max - delta}.

Primal recovery: for each delta, the transportation LP over the groups (y_gt = head count of
group g sent to t in A_g, sum_t y_gt = m_g, L_t <= sum_g y_gt <= U_t, value sum y_gt mean_g(v_t))
is solved by HiGHS simplex; its vertex is integral (totally unimodular, integer data). Giving
every user of g the fractions y_gt / m_g is a feasible primal whose value is exactly the LP's.
The integral assignment splits g by a seeded hash rank instead (the first y_g0 users of g in hash
order to the first treatment of A_g, ...), so capacities hold exactly; a user's value then
differs from the fractional one by at most delta (both lie within delta of b_i + p_t), so its
value is at least LP value - delta * (users in ambiguous groups). The method stops when the
duality gap D(p_best) - that certified lower bound is at most ``tol`` relative; the gap of the
materialised assignment is reported exactly afterwards.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.optimize import linprog

from segmentation.transport.capacity import Capacities
from segmentation.transport.kernel import PriceStats, assign_rows, batch_rows, merge_rows, user_hash

log = logging.getLogger(__name__)

DELTA_EXPONENTS = (None, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)   # None: exact ties only


def delta_ladder(scale: float) -> np.ndarray:
    """Tolerances for candidate sets: 0 and scale * 10^-j."""
    scale = max(float(scale), 1e-300)
    return np.array([0.0 if e is None else scale * 10.0 ** -e for e in DELTA_EXPONENTS])


def capacity_term(p: np.ndarray, caps: Capacities) -> float:
    return float(np.sum(np.where(p >= 0, caps.upper * p, caps.lower * p)))


def subgradient(p: np.ndarray, counts: np.ndarray, caps: Capacities) -> np.ndarray:
    """A subgradient of D at p (at p_t = 0 the capacity term's slope is chosen in [L_t, U_t])."""
    slope = np.where(p > 0, caps.upper, np.where(p < 0, caps.lower, np.clip(counts, caps.lower, caps.upper)))
    return slope.astype(np.float64) - counts


@dataclass
class SplitPlan:
    """What the final assignment needs: prices, a tolerance and the head counts of each group."""

    prices: np.ndarray
    delta: float
    splits: dict            # ambiguous mask -> int64 head counts per treatment (length K)
    lp_value: float         # value of the fractional split (exact)
    n_ambiguous: int

    @property
    def certified(self) -> float:
        """Lower bound on the value of the hash-rounded assignment."""
        return self.lp_value - self.delta * self.n_ambiguous


@dataclass
class DualResult:
    prices: np.ndarray      # best dual prices
    dual: float             # D(prices)
    plan: SplitPlan
    iterations: int
    converged: bool
    gap_bound: float        # dual - plan.certified
    history: list = field(default_factory=list)


def group_lp(stats: PriceStats, level: int, caps: Capacities, K: int):
    """The transportation LP over the candidate-set groups of one tolerance level.

    Returns (value, splits for ambiguous masks, n in ambiguous groups) or None if infeasible.
    """
    keys = sorted(m for (lv, m) in stats.groups if lv == level)
    var_g, var_t, obj = [], [], []
    for gi, mask in enumerate(keys):
        vec = stats.groups[(level, mask)]
        m = vec[0]
        for t in range(K):
            if mask >> t & 1:
                var_g.append(gi)
                var_t.append(t)
                obj.append(vec[1 + t] / m)
    if not obj:
        return None
    var_g, var_t = np.array(var_g), np.array(var_t)
    sizes = np.array([stats.groups[(level, m)][0] for m in keys])
    fixed = np.array([bin(m).count("1") == 1 for m in keys])
    # only the ambiguous groups are free; fixed groups just use capacity
    used = np.zeros(K)
    base = 0.0
    for gi, mask in enumerate(keys):
        if fixed[gi]:
            t = int(mask).bit_length() - 1
            used[t] += sizes[gi]
            base += stats.groups[(level, mask)][1 + t]
    if np.any(used > caps.upper):
        return None
    amb_mass = np.zeros(K)
    for gi, mask in enumerate(keys):
        if not fixed[gi]:
            amb_mass[[t for t in range(K) if mask >> t & 1]] += sizes[gi]
    if np.any(used + amb_mass < caps.lower):
        return None                 # cheap necessary condition: skip the LP
    free = ~fixed[var_g]
    if not free.any():
        if np.all(used >= caps.lower) and np.all(used <= caps.upper):
            return base, {}, 0
        return None
    fg = var_g[free]
    ft = var_t[free]
    fo = np.array(obj)[free]
    amb_groups = np.unique(fg)
    row_of = {g: r for r, g in enumerate(amb_groups)}
    A_eq = np.zeros((len(amb_groups), len(fo)))
    for j, g in enumerate(fg):
        A_eq[row_of[g], j] = 1.0
    b_eq = sizes[amb_groups]
    A_cap = np.zeros((K, len(fo)))
    A_cap[ft, np.arange(len(fo))] = 1.0
    A_ub = np.vstack([A_cap, -A_cap])
    b_ub = np.concatenate([caps.upper - used, -(caps.lower - used)])
    res = linprog(-fo, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=(0, None), method="highs-ds")
    if res.status != 0:
        return None
    y = np.rint(res.x)
    if np.max(np.abs(y - res.x)) > 1e-6 or np.any(A_cap @ y > caps.upper - used + 0.5) \
            or np.any(A_cap @ y < caps.lower - used - 0.5) or np.any(np.abs(A_eq @ y - b_eq) > 0.5):
        return None                 # not an integral vertex (should not happen with simplex)
    splits = {}
    for j, (g, t) in enumerate(zip(fg, ft)):
        splits.setdefault(int(keys[g]), np.zeros(K, dtype=np.int64))[t] += int(y[j])
    value = base + float(fo @ y)
    return value, splits, int(b_eq.sum())


def _ambiguous(stats: PriceStats, level: int) -> tuple:
    """The ambiguous groups of a level as a hashable, sorted tuple of (mask, size)."""
    return tuple(sorted((m, float(v[0])) for (lv, m), v in stats.groups.items() if lv == level and m & (m - 1)))


def best_plan(stats: PriceStats, p: np.ndarray, deltas: np.ndarray, caps: Capacities, K: int,
              floor: float = -math.inf, ceiling: float = math.inf, solved: list | None = None):
    """The best certified primal over the tolerance levels (None if no level's LP is feasible).

    Levels are visited in increasing order of delta and two kinds are skipped without changing
    the result (the best ``certified = LP value - delta * n_ambiguous``):

    1. A level whose ambiguous groups (the sorted (mask, size) pairs) equal those of the level
       visited just before it (a smaller delta). Proof: a user is ambiguous at delta iff the gap
       between its best and second-best surplus is <= delta, and its candidate set
       {t : w_t >= b - delta} only grows with delta; so the ambiguous users of the smaller delta
       are a subset of those of the larger one, and each user's mask a subset of its mask there.
       Equal total sizes make the user sets equal, and equal mask multisets with masks that can
       only grow make every user's mask equal. The fixed users (the rest) are then the same with
       the same argmax, so both levels give the same LP (same value, or both infeasible), and the
       larger delta's certificate is smaller. If the smaller level was itself skipped by rule 2,
       the larger one fails rule 2 too (its bound is lower, ``floor`` only rises).
       (fcd4e7f applied this rule in the ladder's order, which after delta = 0 runs from the
       largest delta down: it kept the largest delta of a run of equal levels and dropped the
       small ones, leaving certificates of LP - scale * 1e-5 * n_ambiguous: the stalled
       tied-values solve of 50c76a7.)
    2. A level whose certificate cannot exceed ``floor`` (a certificate already known): its LP
       value is that of a feasible fractional primal, hence at most the primal optimum, hence at
       most any dual value ``ceiling``; so its certificate is at most ``ceiling - delta * n_amb``.

    ``solved``, if a list, receives the levels whose LP was solved (for tests).
    """
    best = None
    prev = None
    for level in np.argsort(deltas, kind="stable"):
        level, delta = int(level), float(deltas[level])
        amb = _ambiguous(stats, level)
        if amb == prev:
            continue
        prev = amb
        n_amb = sum(m for _, m in amb)
        known = max(floor, best.certified if best is not None else -math.inf)
        if ceiling - delta * n_amb <= known:
            continue
        if solved is not None:
            solved.append(level)
        out = group_lp(stats, level, caps, K)
        if out is None:
            continue
        value, splits, n_amb = out
        plan = SplitPlan(prices=p.copy(), delta=delta, splits=splits, lp_value=value, n_ambiguous=n_amb)
        if best is None or plan.certified > best.certified:
            best = plan
    return best


def boundary_density(stats: PriceStats, deltas: np.ndarray, K: int, scale: float) -> np.ndarray | None:
    """The Hessian of the users' part of D, estimated from one pass: H = Laplacian of rho, where
    rho_st is the number of users within delta of indifference between s and t (their two best,
    or within a larger tie set) per unit of delta, at the ladder level delta = scale * 1e-2.
    For a continuous distribution of values, d counts_t / d p_s = rho_st (s != t) as delta -> 0:
    the second derivative of sum_i max_t (v_it - p_t), whose subgradient is -counts."""
    level = int(np.argmin(np.abs(deltas - 1e-2 * scale)))
    delta = float(deltas[level])
    if delta <= 0:
        return None
    H = np.zeros((K, K))
    for (lv, mask), vec in stats.groups.items():
        if lv != level or not mask & (mask - 1):
            continue
        ts = [t for t in range(K) if mask >> t & 1]
        w = vec[0] / delta / (len(ts) - 1)
        for a_ in ts:
            for b_ in ts:
                if a_ != b_:
                    H[a_, b_] -= w
                    H[a_, a_] += w
    return H if np.any(H) else None


def newton_point(p: np.ndarray, counts: np.ndarray, H: np.ndarray, caps: Capacities, radius: float) -> np.ndarray:
    """argmin over x of the second-order model of D at p, ``-counts.(x - p) + (x - p)'H(x - p)/2 +
    c(x)``, with x - p in the box of half-width ``radius`` (x = a - b, a, b >= 0 makes c linear;
    L-BFGS-B with bounds). A candidate price vector only: the cutting planes keep convergence."""
    from scipy.optimize import minimize

    K = len(p)
    Hr = H + 1e-9 * max(float(np.trace(H)), 1.0) / K * np.eye(K)
    U, L = caps.upper.astype(np.float64), caps.lower.astype(np.float64)

    def f(z):
        x = z[:K] - z[K:]
        d = x - p
        Hd = Hr @ d
        val = -counts @ d + 0.5 * d @ Hd + U @ z[:K] - L @ z[K:]
        gx = -counts + Hd
        return val, np.concatenate([gx + U, -gx - L])

    lo, hi = p - radius, p + radius
    z0 = np.concatenate([np.maximum(p, 0), np.maximum(-p, 0)])
    bounds = [(max(0.0, l_), max(0.0, h_)) for l_, h_ in zip(lo, hi)] + \
             [(max(0.0, -h_), max(0.0, -l_)) for l_, h_ in zip(lo, hi)]
    res = minimize(f, z0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 200})
    x = res.x[:K] - res.x[K:]
    return np.clip(x, lo, hi)


RADII = (0.125, 1.0, 8.0)    # trust radii tried in one pass, as multiples of the current box
NEWTON = True               # also evaluate the Newton point of each round (dual_iterations)


def solve_dual(evaluate: Callable[[np.ndarray, np.ndarray], PriceStats], K: int, caps: Capacities,
               scale: float, tol: float = 1e-9, max_iter: int = 500, p0: np.ndarray | None = None,
               quiet: bool = False) -> DualResult:
    """Minimise D(p) by box-step cutting planes; ``evaluate(p, deltas)`` is one pass over the users.

    If ``evaluate`` has a ``many(points, deltas)`` attribute, the price vectors of one round go to
    it together (one pass); otherwise each is evaluated on its own. ``scale`` is the spread of the
    values (max - min): it sets the price box and the tolerance ladder. Stops when
    (D(p_best) - certified primal) <= tol * max(|D|, 1e-12 * scale * n).
    """
    many = getattr(evaluate, "many", None) or (lambda pts, d: [evaluate(p, d) for p in pts])
    steps = dual_iterations(K, caps, scale, tol=tol, max_iter=max_iter, p0=p0, quiet=quiet)
    request = next(steps)
    while True:
        try:
            request = steps.send(many([p for p, _ in request], request[0][1]))
        except StopIteration as stop:
            return stop.value


def dual_iterations(K: int, caps: Capacities, scale: float, tol: float = 1e-9, max_iter: int = 500,
                    p0: np.ndarray | None = None, box0: float | None = None, radii=None,
                    newton: bool | None = None, quiet: bool = False):
    """``solve_dual`` as a generator: yields a list of ``(p, deltas)`` (the price vectors of one
    round, evaluated in one pass), is sent their ``PriceStats`` (a list, same order), returns
    the ``DualResult``. Lets one pass over the users serve many dual solves (``transport.search``
    runs many in lockstep).

    A round: the first evaluates p0 alone; later ones solve the cutting-plane master LP in boxes
    of half-width ``box * r`` around the best point for every r in ``radii`` and evaluate the
    distinct solutions together (several candidate price vectors per pass). Every evaluated point
    adds its cut; the best one becomes the centre if it lowers D, and the box becomes the radius
    that produced it, doubled if the step achieved at least half the decrease its model predicted,
    halved otherwise (halved also when no point improves). ``iterations`` counts rounds (passes).
    """
    radii = RADII if radii is None else radii
    newton = NEWTON if newton is None else newton
    scale = float(scale) if scale > 0 else 1.0
    deltas = delta_ladder(scale)
    R = 2.0 * scale + 1.0
    tiny = 1e-15 * scale
    p_first = np.zeros(K) if p0 is None else np.asarray(p0, dtype=np.float64).copy()
    cuts_g, cuts_b = [], []
    center, d_center = None, math.inf
    center_stats = None
    box = scale / 2.0 if box0 is None else float(box0)
    best_plan_ = None
    history = []
    points = [(p_first, None, None)]         # (price vector, box that produced it, predicted decrease)
    it = 0
    converged = False
    n = 0
    denom = 1.0
    for it in range(1, max_iter + 1):
        stats = yield [(q.copy(), deltas) for q, _, _ in points]
        evals = []
        for (q, radius, predicted), st in zip(points, stats):
            n = st.n
            D = st.smax + capacity_term(q, caps)
            g = subgradient(q, st.counts, caps)
            cuts_g.append(g)
            cuts_b.append(g @ q - D)            # z >= D + g.(x - q)  <=>  g.x - z <= g.q - D
            plan = best_plan(st, q, deltas, caps, K,
                             floor=best_plan_.certified if best_plan_ is not None else -math.inf,
                             ceiling=min(D, d_center))
            if plan is not None and (best_plan_ is None or plan.certified > best_plan_.certified):
                best_plan_ = plan
            evals.append((D, q, radius, predicted, st))
        D, q, radius, predicted, st = min(evals, key=lambda e: e[0])
        if D < d_center:
            center_stats = st
            if radius is not None:
                box = radius
                box = max(box / 2.0, tiny) if d_center - D < 0.5 * predicted else min(box * 2.0, R)
            center, d_center = q.copy(), D
        elif radius is not None:
            box = max(box / 2.0, tiny)
        gap = d_center - (best_plan_.certified if best_plan_ is not None else -math.inf)
        denom = max(abs(d_center), 1e-12 * scale * max(n, 1))
        history.append({"iteration": it, "dual": D, "best_dual": d_center, "points": len(points),
                        "primal_bound": None if best_plan_ is None else best_plan_.certified,
                        "gap": gap, "box": box})
        log.debug("transport iter %d: D=%.12g best=%.12g gap=%.3g box=%.3g", it, D, d_center, gap, box)
        if gap <= tol * denom:
            converged = True
            break
        A = np.hstack([np.array(cuts_g), -np.ones((len(cuts_g), 1))])
        c = np.zeros(K + 1)
        c[-1] = 1.0
        points, seen = [], []
        for r in sorted({min(max(box * f, tiny), R) for f in radii}):
            lo = np.maximum(center - r, -R)
            hi = np.minimum(center + r, R)
            res = linprog(c, A_ub=A, b_ub=np.array(cuts_b), bounds=list(zip(lo, hi)) + [(None, None)],
                          method="highs")
            if res.status != 0:
                raise RuntimeError(f"cutting-plane master LP failed: {res.message}")
            q = res.x[:K]
            predicted = d_center - res.x[K]
            if predicted <= 1e-15 * denom and r >= R:
                # the model certifies the centre optimal on the whole price box; nothing left to gain
                q = center.copy()
            if any(np.array_equal(q, s_) for s_ in seen):
                continue
            seen.append(q)
            points.append((q, r, predicted))
        if newton:
            H = boundary_density(center_stats, deltas, K, scale)
            if H is not None:
                r = min(max(box * max(radii), tiny), R)
                q = newton_point(center, center_stats.counts.astype(np.float64), H, caps, r)
                if not any(np.allclose(q, s_, rtol=0, atol=tiny) for s_ in seen):
                    step = float(np.max(np.abs(q - center)))
                    model = float(np.max(A[:, :K] @ q - np.array(cuts_b)))     # the cutting-plane model at q
                    points.append((q, max(step, tiny), d_center - model))
    if best_plan_ is None:
        raise RuntimeError("no feasible split of the tied users was found (capacities infeasible?)")
    if not converged and not quiet:
        warnings.warn(f"transport: duality gap {d_center - best_plan_.certified:.3g} above tolerance after "
                      f"{max_iter} price updates", RuntimeWarning, stacklevel=3)
    return DualResult(prices=center, dual=d_center, plan=best_plan_, iterations=it, converged=converged,
                      gap_bound=d_center - best_plan_.certified, history=history)


@dataclass
class Assignment:
    """A solved allocation over the offered treatments (indices into them)."""

    treatment: np.ndarray   # per user, index into the offered treatments
    value: float            # sum_i v_i,treatment(i)
    counts: np.ndarray
    result: DualResult

    @property
    def gap(self) -> float:
        return self.result.dual - self.value


def hash_ranks(ids, seed: int, masks: np.ndarray) -> np.ndarray:
    """0-based rank of each user within its candidate-set group, by (seeded hash, id)."""
    ids = np.asarray(ids)
    h = user_hash(ids, seed)
    order = np.lexsort((ids, h, masks))
    rank = np.empty(len(ids), dtype=np.int64)
    sm = masks[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sm)) + 1]
    run = np.repeat(starts, np.diff(np.r_[starts, len(sm)]))
    rank[order] = np.arange(len(sm)) - run
    return rank


def solve_numpy(V: np.ndarray, caps: Capacities, ids=None, seed: int = 0, tol: float = 1e-9,
                max_iter: int = 500) -> Assignment:
    """The whole algorithm in memory: V is n x K (users x offered treatments)."""
    from segmentation.transport.kernel import candidate_masks

    V = np.ascontiguousarray(V, dtype=np.float64)
    n, K = V.shape
    if n != caps.n:
        raise ValueError(f"capacities were computed for {caps.n} users, the values have {n}")
    ids = np.arange(n) if ids is None else np.asarray(ids)
    scale = float(V.max() - V.min()) if n else 1.0

    def evaluate(p, deltas):
        return merge_rows(batch_rows(V, p, deltas), K)

    res = solve_dual(evaluate, K, caps, scale, tol=tol, max_iter=max_iter)
    plan = res.plan
    masks = candidate_masks(V, plan.prices, plan.delta)
    rank = hash_ranks(ids, seed, masks) if plan.splits else None
    t = assign_rows(V, plan.prices, plan.delta, plan.splits, rank)
    value = float(V[np.arange(n), t].sum())
    return Assignment(treatment=t, value=value, counts=np.bincount(t, minlength=K), result=res)
