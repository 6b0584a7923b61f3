"""Which S treatments to offer under capacity limits: exact enumeration, or greedy + Lloyd + swaps.

With capacities the value of an offered set A is not F(A) = sum_i max_{t in A} v_it but

    G(A) = max { sum_i v_i,t(i) : t(i) in A, L_t <= #{i : t(i) = t} <= U_t },

the capacity-constrained optimal transport optimum, found through its dual (``transport.dual``).
G(A) = -inf when A cannot meet the limits (sum_{t in A} U_t < n or a forced treatment missing).

Per S, the search (Zhang and Misra's alternation, made capacity-aware):

1. **Initial set.** If C(|T| - #forced, S - #forced) <= ``exact_limit``, enumeration, exact up to
   the duality-gap tolerance: F(A) of every feasible set in one pass; since G(A) <= F(A), sets
   are solved in decreasing order of F, a batch at a time (the batch's dual solves in lockstep,
   every pass serving all of them), and a set is pruned once its F does not exceed the best G
   found (branch and bound; without capacities the first set solved is the answer): done. Otherwise greedy on F, forced treatments
   first: F is monotone submodular, so without capacities greedy is within 1 - 1/e of the best
   set. A candidate is only added if the set can still be completed to meet the upper limits
   (its U plus the largest remaining U's reach n).
2. **Lloyd step** (assignment <-> choice, like k-means on value functions). Solve the OT for A;
   the optimal fractional assignment splits the users into segments s_k (one per offered
   treatment k, mass m_k, tied users split by the dual's head counts). Let W_kt = the value of
   segment k if it were all given treatment t (one pass: users grouped by candidate set, their
   value sums for every t in T). Re-choose: an injective map sigma from segments to T maximising
   sum_k W_k,sigma(k), with L_t <= m_k <= U_t for t = sigma(k) and every forced treatment used
   (a rectangular linear assignment problem, solved exactly). The relabelled assignment is
   feasible for A' = sigma(A) and worth sum_k W_k,sigma(k) >= sum_k W_kk = G(A) (the identity is
   one of the maps), so G(A') >= G(A): the objective never decreases (up to the dual
   tolerance). It is also *enforced*: A' is kept only if its solved value beats A's by more than
   the tolerance.
3. **Swap refinement.** Neighbours A - a + b (a not forced) that can meet the limits are ranked by
   F, and the best ``swap_candidates`` are candidates too; a neighbour whose F does not beat
   G(A) is never solved (G <= F: it cannot win).

   Steps 2 and 3 share passes: one pass returns the segment sums and F of every neighbour, then
   the Lloyd set and the swap candidates are solved under capacities together (in lockstep), and
   the best of them is taken if it beats A by more than the tolerance (a Lloyd step or a swap);
   stop when none does (or after ``max_rounds``). Each round is thus one pass plus the longest
   of its dual solves, not the Lloyd solve followed by the swap solves.

A search may be given a ``start`` set (the same search's answer on a sample of the users,
``plan.decide``): enumeration solves it first (an early incumbent prunes the most; still exact),
the heuristic search starts its Lloyd + swap rounds from it instead of from greedy.

Every search (one per S, for the value-vs-S curve) is a generator that yields lists of requests
(``Solve``, ``Sums``, ``Sets``); ``run_searches`` advances all of them together so one pass over
the users answers every open request of every search (``transport.passes``).
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from segmentation.transport.capacity import Capacities
from segmentation.transport.dual import DualResult, dual_iterations
from segmentation.transport.passes import DualTask, SetTask, SumsTask

log = logging.getLogger(__name__)

WARM_BOX = 1.0 / 64      # initial half-width of the price box of a warm-started dual solve, x value spread
SAMPLE_BOX = 1.0 / 256   # the same after a solve on the driver-side sample
SAMPLE_TOL = 1e-7        # relative duality gap of the sample solves (warm starts only)
SAMPLE_MAX_ITER = 100


@dataclass
class Solve:
    """Solve the capacity-constrained OT over the offered set ``cols`` (sorted T indices)."""

    cols: tuple
    caps: Capacities
    p0: np.ndarray | None = None


@dataclass
class Sums:
    cols: tuple
    p: np.ndarray
    delta: float


@dataclass
class Sets:
    sets: list


@dataclass
class SearchResult:
    S: int
    offered: tuple | None           # sorted T indices, None if no feasible set
    result: DualResult | None
    value: float                    # value of the optimal fractional primal of the set (-inf if none)
    method: dict = field(default_factory=dict)


def set_value(r: DualResult) -> float:
    """The value of the set: the exact value of the feasible fractional primal the dual recovered
    (within the certified duality gap of G(A))."""
    return float(r.plan.lp_value)


class Limits:
    """Head-count bounds for every candidate treatment and the feasibility of offered sets."""

    def __init__(self, n: int, lower: np.ndarray, upper: np.ndarray, forced: Sequence[int]):
        self.n, self.lower, self.upper = int(n), np.asarray(lower), np.asarray(upper)
        self.forced = sorted(set(forced))

    def caps(self, cols: Sequence[int]) -> Capacities | None:
        cols = list(cols)
        lo, hi = self.lower[cols], self.upper[cols]
        if hi.sum() < self.n or lo.sum() > self.n or not set(self.forced) <= set(cols):
            return None
        return Capacities(lower=lo.copy(), upper=hi.copy(), n=self.n)

    def completable(self, chosen: Sequence[int], size: int) -> bool:
        """Can ``chosen`` grow to ``size`` treatments whose upper bounds reach n?"""
        rest = sorted((self.upper[t] for t in range(len(self.upper)) if t not in chosen), reverse=True)
        return int(self.upper[list(chosen)].sum() + sum(rest[:size - len(chosen)])) >= self.n


def _warm(prices: np.ndarray, old: Sequence[int], new: Sequence[int], mapping: dict) -> np.ndarray:
    """Prices for ``new`` from ``old``'s: kept treatments keep theirs, ``mapping[new_t] = old_t``."""
    pos = {t: k for k, t in enumerate(old)}
    return np.array([prices[pos[mapping.get(t, t)]] for t in new], dtype=np.float64)


def segment_values(cols: Sequence[int], r: DualResult, groups: dict, n_T: int):
    """(m_k, W_k.) of the fractional optimal assignment: segment k's mass and its value sums under
    every treatment of T. Tied users of group g are split by the plan's head counts y_gk."""
    K = len(cols)
    mass = np.zeros(K)
    W = np.zeros((K, n_T))
    for mask, vec in groups.items():
        m, sums = vec[0], np.asarray(vec[1:])
        if m <= 0:
            continue
        if mask & (mask - 1) == 0:
            k = int(mask).bit_length() - 1
            mass[k] += m
            W[k] += sums
        else:
            y = r.plan.splits.get(int(mask))
            if y is None:           # the pass found a tie group the plan did not: split evenly
                ks = [k for k in range(K) if mask >> k & 1]
                y = np.zeros(K)
                y[ks] = m / len(ks)
            for k in np.flatnonzero(y):
                mass[k] += y[k]
                W[k] += (y[k] / m) * sums
    return mass, W


def lloyd_choice(cols: Sequence[int], mass: np.ndarray, W: np.ndarray, limits: Limits):
    """The best injective relabelling sigma of the segments (see module docstring).

    Returns (new sorted set, {new_t: old_t}, value of the relabelled assignment, value of the identity).
    """
    K, n_T = W.shape
    cost = -W.copy()
    m = np.rint(mass)
    ok = (limits.lower[None, :] <= m[:, None]) & (m[:, None] <= limits.upper[None, :])
    cost[~ok] = np.inf
    forced = np.zeros(n_T, dtype=bool)
    forced[limits.forced] = True
    dummy = np.where(forced[None, :], np.inf, 0.0) * np.ones((n_T - K, 1))
    full = np.vstack([cost, dummy])
    ident = float(sum(W[k, t] for k, t in enumerate(cols)))
    try:
        rows, sigma = linear_sum_assignment(full)
    except ValueError:               # no feasible relabelling besides... keep the set
        return tuple(cols), {}, ident, ident
    sigma = sigma[np.argsort(rows)][:K]
    value = float(W[np.arange(K), sigma].sum())
    new = tuple(sorted(int(t) for t in sigma))
    mapping = {int(sigma[k]): int(cols[k]) for k in range(K)}
    return new, mapping, value, ident


def search(S: int, n_T: int, limits: Limits, exact_limit: int, swap_candidates: int | None,
           max_rounds: int, rel_tol: float, start: tuple | None = None):
    """The search for one S, as a generator of request lists (see module docstring).

    ``start``: a set found by the same search on a sample of the users (``plan.decide``). With
    enumeration it is solved first (the best incumbent early prunes the most; the result is still
    exact); otherwise it replaces the greedy set and the Lloyd + swap rounds run from it.
    """
    forced = limits.forced
    if start is not None:
        start = tuple(sorted(int(t) for t in start))
        if len(start) != S or limits.caps(start) is None:
            start = None
    free = [t for t in range(n_T) if t not in forced]
    k = S - len(forced)
    method = {"S": S, "sets_solved": 0, "set_values": 0, "lloyd_steps": 0, "swaps": 0,
              "objective": []}
    if k < 0:
        method["initial"] = "infeasible"
        return SearchResult(S, None, None, -math.inf, method)
    if math.comb(len(free), k) <= exact_limit:
        sets = [tuple(sorted(forced + list(c))) for c in itertools.combinations(free, k)]
        feasible = [(A, limits.caps(A)) for A in sets]
        feasible = [(A, c) for A, c in feasible if c is not None]
        method.update(initial="exact", sets_enumerated=len(sets), sets_feasible=len(feasible))
        if not feasible:
            return SearchResult(S, None, None, -math.inf, method)
        # branch and bound: G(A) <= F(A), so sets are solved in decreasing order of F, a batch at a
        # time, and every set whose F does not exceed the best G found is pruned (still exact)
        fv = (yield [Sets([A for A, _ in feasible])])[0]
        method["set_values"] += len(feasible)
        order = [int(j) for j in np.argsort(-fv, kind="stable")]
        if start is not None:
            first = [j for j in order if feasible[j][0] == start]
            order = first + [j for j in order if feasible[j][0] != start]
            method["sample_set"] = list(start)
        best, best_r, best_A = -math.inf, None, None
        batch = max(1, swap_candidates or len(order))
        while order:
            thr = rel_tol * max(abs(best), 1e-300) if best_r is not None else 0.0
            order = [j for j in order if fv[j] > best + thr]
            if not order:
                break
            take, order = order[:batch], order[batch:]
            results = yield [Solve(*feasible[j]) for j in take]
            method["sets_solved"] += len(take)
            for j, r in zip(take, results):
                if set_value(r) > best:
                    best, best_r, best_A = set_value(r), r, feasible[j][0]
        method["sets_pruned"] = len(feasible) - method["sets_solved"]
        method["objective"].append(best)
        return SearchResult(S, best_A, best_r, best, method)

    # greedy on F, keeping the set completable under the upper limits (or the sample's set)
    method["initial"] = "greedy" if start is None else "sample"
    chosen = list(forced) if start is None else list(start)
    if not limits.completable(chosen, S):
        return SearchResult(S, None, None, -math.inf, method)
    while len(chosen) < S:
        cands = [t for t in free if t not in chosen and limits.completable(chosen + [t], S)]
        vals = (yield [Sets([tuple(chosen + [t]) for t in cands])])[0]
        method["set_values"] += len(cands)
        chosen.append(cands[int(np.argmax(vals))])
    A = tuple(sorted(chosen))
    caps = limits.caps(A)
    r = (yield [Solve(A, caps)])[0]
    method["sets_solved"] += 1
    cur = set_value(r)
    method["objective"].append(cur)
    method["greedy_set" if start is None else "sample_set"] = list(A)
    seen = {A}
    for _ in range(max_rounds):
        thr = rel_tol * max(abs(cur), 1e-300)
        # one pass: the segment sums of the Lloyd step and F of every swap neighbour
        swaps = [(a, b) for a in A if a not in forced for b in free if b not in A]
        cand = [(a, b, tuple(sorted([b if x == a else x for x in A]))) for a, b in swaps]
        cand = [c for c in cand if c[2] not in seen and limits.caps(c[2]) is not None]
        asked = [Sums(A, r.plan.prices, r.plan.delta)] + ([Sets([c[2] for c in cand])] if cand else [])
        got = yield asked
        groups = got[0]
        mass, W = segment_values(A, r, groups, n_T)
        new, mapping, est, ident = lloyd_choice(A, mass, W, limits)
        solves, kinds = [], []
        if new != A and est > ident + thr and new not in seen:
            solves.append(Solve(new, limits.caps(new), _warm(r.plan.prices, A, new, mapping)))
            kinds.append("lloyd")
        if cand:
            fv = got[1]
            method["set_values"] += len(cand)
            # G <= F: a neighbour whose capacity-free value does not beat the current set cannot
            order = [j for j in np.argsort(-fv, kind="stable") if fv[j] > cur + thr]
            method["swaps_pruned"] = method.get("swaps_pruned", 0) + len(cand) - len(order)
            top = [cand[j] for j in order[:swap_candidates or len(cand)] if cand[j][2] != new or not kinds]
            solves += [Solve(c[2], limits.caps(c[2]), _warm(r.plan.prices, A, c[2], {c[1]: c[0]})) for c in top]
            kinds += ["swap"] * len(top)
        if not solves:
            break
        # the Lloyd candidate and the best swap neighbours are solved together (in lockstep)
        rs = yield solves
        method["sets_solved"] += len(solves)
        seen.update(q.cols for q in solves)
        vals = [set_value(x) for x in rs]
        j = int(np.argmax(vals))
        if kinds[0] == "lloyd" and vals[0] <= cur + thr:
            method["lloyd_rejected"] = method.get("lloyd_rejected", 0) + 1
        if vals[j] > cur + thr:
            A, r, cur = tuple(solves[j].cols), rs[j], vals[j]
            method["lloyd_steps" if kinds[j] == "lloyd" else "swaps"] += 1
            method["objective"].append(cur)
            continue
        break
    return SearchResult(S, A, r, cur, method)


def sample_caps(caps: Capacities, m: int) -> Capacities:
    """The limits scaled to a sample of m users, rounded outward so they stay feasible."""
    lo = np.floor(caps.lower * (m / caps.n)).astype(np.int64)
    hi = np.minimum(np.ceil(caps.upper * (m / caps.n)).astype(np.int64), m)
    return Capacities(lower=lo, upper=hi, n=m)


def sample_prices(sample: np.ndarray, q: Solve, scale: float, tol: float) -> np.ndarray:
    """Prices of the dual solved on the driver-side sample (in memory, no pass over the users):
    the warm start of the solve on all users, which alone decides the plan and its gap."""
    from segmentation.transport.dual import solve_dual
    from segmentation.transport.kernel import batch_rows, merge_rows

    V = sample[:, list(q.cols)]

    def evaluate(p, deltas):
        return merge_rows(batch_rows(V, p, deltas), V.shape[1])

    r = solve_dual(evaluate, V.shape[1], sample_caps(q.caps, len(V)), scale, tol=max(tol, SAMPLE_TOL),
                   max_iter=SAMPLE_MAX_ITER, p0=q.p0, quiet=True)
    return r.prices


def run_searches(searches: list, run: Callable, scale: float, tol: float, max_iter: int = 500) -> tuple[list, int]:
    """Advance every search generator together; each pass (``run(tasks)``) serves every open
    request of every search. Returns (the searches' results, number of passes).

    If ``run.sample`` holds a driver-side sample of users (users x |T|), every dual solve under
    binding limits is first solved on the sample in memory and the solve on all users starts
    from those prices in a small box (``SAMPLE_BOX`` of the value spread): fewer passes. The
    solve on all users is the one that certifies its duality gap, so results stay exact."""
    sample = getattr(run, "sample", None)
    n_s = len(searches)
    out: list = [None] * n_s
    pending: list = [None] * n_s      # per search: [request, dual generator, (p, deltas), result, done]

    def start(i, value):
        gen = searches[i]
        try:
            reqs = next(gen) if value is None else gen.send(value)
            while not reqs:
                reqs = gen.send([])
        except StopIteration as stop:
            out[i] = stop.value
            pending[i] = None
            return
        entries = []
        for q in reqs:
            if isinstance(q, Solve):
                p0, box0 = q.p0, None if q.p0 is None else WARM_BOX * scale
                if sample is not None and len(sample) and q.caps.binding:
                    try:
                        p0, box0 = sample_prices(sample, q, scale, tol), SAMPLE_BOX * scale
                    except RuntimeError:        # no feasible split on the sample: start as asked
                        pass
                g = dual_iterations(len(q.cols), q.caps, scale, tol=tol, max_iter=max_iter, p0=p0, box0=box0)
                entries.append([q, g, next(g), None, False])
            else:
                entries.append([q, None, None, None, False])
        pending[i] = entries

    for i in range(n_s):
        start(i, None)
    passes = 0
    while any(p is not None for p in pending):
        tasks, where = [], []
        for i, entries in enumerate(pending):
            if entries is None:
                continue
            for e in entries:
                if e[4]:
                    continue
                q = e[0]
                if isinstance(q, Solve):          # the price vectors of one round of the dual
                    tasks.extend(DualTask(tuple(q.cols), p, d) for p, d in e[2])
                    where.append((e, len(e[2])))
                    continue
                if isinstance(q, Sums):
                    tasks.append(SumsTask(tuple(q.cols), np.asarray(q.p, dtype=np.float64), float(q.delta)))
                else:
                    tasks.append(SetTask(tuple(tuple(s) for s in q.sets)))
                where.append((e, None))
        results = run(tasks)
        passes += 1
        if passes % 10 == 0:
            log.info("transport search: %d passes, %d tasks in the last (%d dual)", passes, len(tasks),
                     sum(isinstance(t, DualTask) for t in tasks))
        k = 0
        for e, width in where:
            if width is None:
                e[3], e[4] = results[k], True
                k += 1
                continue
            res, k = results[k:k + width], k + width
            try:
                e[2] = e[1].send(res)
            except StopIteration as stop:
                e[3], e[4] = stop.value, True
        for i, entries in enumerate(pending):
            if entries is not None and all(e[4] for e in entries):
                start(i, [e[3] for e in entries])
    return out, passes
