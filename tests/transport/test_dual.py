"""The dual assignment (numpy) against an exact LP (HiGHS), capacities, ties, bad limits."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linprog

from segmentation.transport.capacity import capacities
from segmentation.transport.dual import solve_numpy

T5 = [f"t{k}" for k in range(5)]


def exact_lp(V, caps):
    """The transportation LP, solved directly by HiGHS."""
    n, K = V.shape
    A_eq = sp.kron(sp.eye(n), np.ones((1, K)))
    A_cap = sp.kron(np.ones((1, n)), sp.eye(K))
    r = linprog(-V.ravel(), A_ub=sp.vstack([A_cap, -A_cap]), b_ub=np.r_[caps.upper, -caps.lower],
                A_eq=A_eq, b_eq=np.ones(n), bounds=(0, None), method="highs")
    assert r.status == 0
    return -r.fun


def values(seed, n=3000, K=5, decimals=None):
    rng = np.random.default_rng(seed)
    V = rng.normal(size=(n, K)) + np.linspace(0.5, -0.2, K)
    return np.round(V, decimals) if decimals is not None else V


@pytest.mark.parametrize("seed,decimals", [(0, None), (1, None), (2, 1)])
def test_matches_exact_lp_and_capacities_hold(seed, decimals):
    V = values(seed, decimals=decimals)
    n = len(V)
    caps = capacities(T5, n, {"t4": 0.1, "t3": 0.15}, {"t0": 0.3, "t1": 0.25})
    a = solve_numpy(V, caps, seed=7)
    ref = exact_lp(V, caps)
    assert a.result.converged
    assert abs(a.value - ref) <= 1e-6 * abs(ref)
    assert np.all(a.counts >= caps.lower) and np.all(a.counts <= caps.upper)
    assert a.counts.sum() == n
    assert a.value == pytest.approx(V[np.arange(n), a.treatment].sum(), rel=1e-12)
    assert a.gap <= 1e-6 * abs(ref)          # the reported gap is a true duality gap
    assert a.gap >= -1e-9 * abs(ref)


def test_exact_ties_are_split_by_hash_to_meet_capacity():
    # every user identical: only the hash decides who goes where, counts must be exact
    n = 1001
    V = np.tile([1.0, 1.0, 0.5], (n, 1))
    caps = capacities(["a", "b", "c"], n, {"c": 0.2}, {"a": 0.5})
    a = solve_numpy(V, caps, seed=3)
    assert a.counts[2] == 201 and a.counts[0] <= 500 and a.counts.sum() == n
    assert a.value == pytest.approx(exact_lp(V, caps), rel=1e-9)
    b = solve_numpy(V, caps, seed=3)
    assert np.array_equal(a.treatment, b.treatment)          # deterministic
    c = solve_numpy(V, caps, seed=4)
    assert np.array_equal(np.bincount(c.treatment, minlength=3), a.counts)
    assert not np.array_equal(a.treatment, c.treatment)       # the seed picks who


def test_no_capacities_is_argmax():
    V = values(3, n=500)
    caps = capacities(T5, 500)
    a = solve_numpy(V, caps)
    assert np.array_equal(a.treatment, V.argmax(axis=1))
    assert a.result.iterations == 1


def test_fractional_share_bounds_round_inward():
    caps = capacities(["a", "b"], 10, {"a": 0.25}, {"a": 0.55})
    assert list(caps.lower) == [3, 0] and list(caps.upper) == [5, 10]
    caps = capacities(["a", "b"], 10, {"a": 0.3}, {"b": 0.7})       # 0.3 * 10 is not 3.0000000001
    assert list(caps.lower) == [3, 0] and list(caps.upper) == [10, 7]


@pytest.mark.parametrize("mins,maxs,match", [
    ({"a": 0.6, "b": 0.5}, {}, r"transport\.min_share"),
    ({}, {"a": 0.4, "b": 0.5}, r"transport\.max_share"),
    ({"a": 0.5}, {"a": 0.4}, r"transport\.min_share\.a"),
    ({"a": 1.5}, {}, r"transport\.min_share\.a"),
])
def test_infeasible_limits_name_the_key(mins, maxs, match):
    with pytest.raises(ValueError, match=match):
        capacities(["a", "b"], 100, mins, maxs)


def test_infeasible_after_rounding_to_heads():
    # shares sum to 1 but 3 users cannot be split into halves of at most 1.5 -> 1 each
    with pytest.raises(ValueError, match=r"transport\.max_share"):
        capacities(["a", "b"], 3, {}, {"a": 0.5, "b": 0.5})


@pytest.mark.parametrize("seed,decimals,shift", [(5, 1, [0.4, 0.2, 0.0]), (6, 2, [0.3, 0.3, 0.0]),
                                                 (7, 0, [0.5, 0.0, 0.0])])
def test_tied_values_converge_on_the_gap(seed, decimals, shift):
    """Rounded values: many users exactly tied at the optimal prices. The solve stops on the
    certified duality gap (not the iteration cap), meets the limits exactly and equals HiGHS."""
    rng = np.random.default_rng(seed)
    n = 1500
    V = np.round(rng.normal(size=(n, 3)) + shift, decimals)
    caps = capacities(["a", "b", "c"], n, {"c": 0.2}, {"a": 0.35})
    a = solve_numpy(V, caps, seed=9, max_iter=200)
    ref = exact_lp(V, caps)
    assert a.result.converged and a.result.iterations < 100
    assert a.result.gap_bound <= 1e-9 * abs(ref)
    assert abs(a.value - ref) <= 1e-9 * abs(ref)
    assert np.all(a.counts >= caps.lower) and np.all(a.counts <= caps.upper)
    assert -1e-9 * abs(ref) <= a.gap <= 1e-9 * abs(ref)


@pytest.mark.parametrize("seed,decimals", [(5, 1), (8, None)])
def test_level_pruning_keeps_the_best_certificate(seed, decimals):
    """best_plan's skipped levels never hold a better certificate: at every price update of a
    solve, the pruned search returns the certificate of solving every level."""
    from segmentation.transport.dual import best_plan, capacity_term, delta_ladder, group_lp
    from segmentation.transport.kernel import batch_rows, merge_rows

    rng = np.random.default_rng(seed)
    n = 1200
    V = rng.normal(size=(n, 3)) + [0.4, 0.2, 0.0]
    V = np.round(V, decimals) if decimals is not None else V
    caps = capacities(["a", "b", "c"], n, {"c": 0.2}, {"a": 0.35})
    res = solve_numpy(V, caps)
    deltas = delta_ladder(float(V.max() - V.min()))
    skipped = 0
    for h in [0, 3, len(res.result.history) // 2, len(res.result.history) - 1]:
        p = res.result.prices if h == len(res.result.history) - 1 else np.random.default_rng(h).normal(0, 0.2, 3)
        st = merge_rows(batch_rows(V, p, deltas), 3)
        full = [group_lp(st, lv, caps, 3) for lv in range(len(deltas))]
        certs = [o[0] - deltas[lv] * o[2] for lv, o in enumerate(full) if o is not None]
        solved = []
        plan = best_plan(st, p, deltas, caps, 3, ceiling=st.smax + capacity_term(p, caps), solved=solved)
        if not certs:
            assert plan is None
            continue
        assert plan.certified == pytest.approx(max(certs), rel=1e-12, abs=1e-9)
        skipped += len(deltas) - len(solved)
    assert skipped > 0                                   # the pruning does prune


@pytest.mark.parametrize("seed,decimals", [(0, None), (3, 2)])
def test_several_points_per_pass_reach_the_same_optimum_in_fewer_passes(seed, decimals):
    """The default round (three master-LP points and a Newton point per pass) against one
    cutting-plane point per pass: same optimum (HiGHS), fewer passes over the users."""
    import segmentation.transport.dual as dual

    V = values(seed, decimals=decimals)
    caps = capacities(T5, len(V), {"t4": 0.1, "t3": 0.15}, {"t0": 0.3, "t1": 0.25})
    ref = exact_lp(V, caps)
    scale = float(V.max() - V.min())

    def solve(**kw):
        """Drive dual_iterations; returns (result, passes, price vectors evaluated)."""
        steps = dual.dual_iterations(5, caps, scale, **kw)
        req, passes, points = next(steps), 0, 0
        while True:
            passes, points = passes + 1, points + len(req)
            try:
                req = steps.send([dual.merge_rows(dual.batch_rows(V, p, d), 5) for p, d in req])
            except StopIteration as stop:
                return stop.value, passes, points

    multi, n_multi, pts_multi = solve()
    single, n_single, pts_single = solve(radii=(1.0,), newton=False)
    assert pts_single == n_single and pts_multi > n_multi           # one point per pass / several
    assert multi.converged and single.converged
    assert multi.iterations == n_multi and single.iterations == n_single
    for r in (multi, single):
        assert r.dual - r.gap_bound == pytest.approx(ref, rel=1e-9)
        assert r.gap_bound <= 1e-9 * abs(ref)
    assert n_multi < n_single
