"""Choosing S treatments: greedy + swap against exhaustive search; the value-vs-S curve."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from segmentation.transport.choose import choose, numpy_set_values, value_curve


def brute(V, S):
    return max(V[:, list(c)].max(axis=1).sum() for c in itertools.combinations(range(V.shape[1]), S))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("S", [1, 2, 3, 4])
def test_exact_enumeration_is_optimal(seed, S):
    V = np.random.default_rng(seed).normal(size=(400, 8)) ** 2
    c = choose(numpy_set_values(V), 8, S)
    assert c.method == "exact"
    assert c.value == pytest.approx(brute(V, S), rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_greedy_swap_vs_exhaustive(seed):
    V = np.random.default_rng(seed).gamma(2.0, size=(400, 10)) * np.linspace(1.0, 1.3, 10)
    f = numpy_set_values(V)
    for S in (2, 3, 4):
        heur = choose(f, 10, S, exact_limit=0)
        assert heur.method == "greedy+swap"
        best = brute(V, S)
        assert heur.value <= best + 1e-9
        assert heur.value >= (1 - 1 / np.e) * best          # the greedy guarantee (swaps only add)
        assert heur.value >= 0.98 * best                      # in practice near-optimal here


def test_forced_treatments_are_offered():
    V = np.random.default_rng(0).normal(size=(300, 6))
    c = choose(numpy_set_values(V), 6, 2, forced=[5], exact_limit=0)
    assert 5 in c.treatments and len(c.treatments) == 2
    e = choose(numpy_set_values(V), 6, 2, forced=[5])
    assert e.method == "exact" and 5 in e.treatments and e.value >= c.value - 1e-9


def test_curve_is_monotone_and_reaches_full():
    V = np.abs(np.random.default_rng(1).normal(size=(300, 5)))
    rows, full = value_curve(numpy_set_values(V), 5, 5)
    assert [r["S"] for r in rows] == [1, 2, 3, 4, 5]
    shares = [r["share_of_full"] for r in rows]
    assert all(b >= a - 1e-12 for a, b in zip(shares, shares[1:]))
    assert shares[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("S,forced,match", [
    (6, [], r"transport\.max_treatments = 6 exceeds"),
    (0, [], r"transport\.max_treatments must be at least 1"),
    (1, [0, 1], r"transport\.min_share"),
])
def test_bad_S_names_the_key(S, forced, match):
    V = np.ones((10, 5))
    with pytest.raises(ValueError, match=match):
        choose(numpy_set_values(V), 5, S, forced=forced)
