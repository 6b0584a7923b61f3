"""Estimator math on tiny hand-computed tables (pure numpy, no Spark)."""
from __future__ import annotations

import numpy as np
import pytest

from segmentation.evaluation.estimators import (Moments, Ratio, Z95, difference_estimate,
                                                propensity_balance, ratio_estimate, share_check,
                                                share_estimate, value_ratio)

# Four exposure rows of three users (A has two rows), two creatives, logged p = 0.5 each.
#   row user shown y  pi(.|x)     q(x, .)     w = pi(a)/p   w*y   DR = sum pi q + w (y - q_a)
#   1   A    0     1  (1, 0)      (.6, .2)    2             2     .6 + 2 (1 - .6) = 1.4
#   2   A    1     0  (1, 0)      (.6, .2)    0             0     .6
#   3   B    1     1  (0, 1)      (.3, .5)    2             2     .5 + 2 (1 - .5) = 1.5
#   4   C    0     0  (.5, .5)    (.4, .4)    1             0     .4 + 1 (0 - .4) = 0
NAMES = ["n", "ipw:P", "w:P", "dr:P"]
ROWS = np.array([[1, 2, 2, 1.4], [1, 0, 0, 0.6], [1, 2, 2, 1.5], [1, 0, 1, 0.0]])
USERS = np.array(["A", "A", "B", "C"])


@pytest.fixture()
def m():
    return Moments.from_rows(ROWS, USERS, NAMES)


def test_moments_aggregate_rows_per_user(m):
    assert m.n_users == 3
    np.testing.assert_allclose(m.S, [4, 4, 5, 3.5])
    V = np.array([[2, 2, 2, 2.0], [1, 2, 2, 1.5], [1, 0, 1, 0.0]])
    np.testing.assert_allclose(m.Q, V.T @ V)


def test_ipw_value_and_user_clustered_se(m):
    e = ratio_estimate(m, value_ratio("P", "ipw"))
    # theta = 4 / 4 = 1; per-user residuals (wy - theta n) = 0, 1, -1;
    # Var = U/(U-1) * sum r^2 / (sum n)^2 = 1.5 * 2 / 16
    assert e.estimate == pytest.approx(1.0)
    assert e.se == pytest.approx(np.sqrt(1.5 * 2 / 16))
    assert e.ci_low == pytest.approx(1.0 - Z95 * e.se)
    assert e.ci_high == pytest.approx(1.0 + Z95 * e.se)


def test_snipw_value_and_se(m):
    e = ratio_estimate(m, value_ratio("P", "snipw"))
    # theta = 4 / 5; residuals wy - theta w: A 2 - 1.6, B 2 - 1.6, C 0 - .8
    assert e.estimate == pytest.approx(0.8)
    assert e.se == pytest.approx(np.sqrt(1.5 * (0.16 + 0.16 + 0.64) / 25))


def test_dr_value_and_se(m):
    e = ratio_estimate(m, value_ratio("P", "dr"))
    # theta = 3.5 / 4; residuals: A 2 - 1.75, B 1.5 - .875, C 0 - .875
    assert e.estimate == pytest.approx(0.875)
    r = np.array([0.25, 0.625, -0.875])
    assert e.se == pytest.approx(np.sqrt(1.5 * (r**2).sum() / 16))


def test_rows_treated_independently_would_give_another_se(m):
    """Clustering matters: the same rows as four independent users give a different se."""
    indep = Moments.from_rows(ROWS, np.array(["A", "A2", "B", "C"]), NAMES)
    assert ratio_estimate(indep, value_ratio("P", "ipw")).se != pytest.approx(
        ratio_estimate(m, value_ratio("P", "ipw")).se)


def test_paired_difference_uses_per_user_differences():
    # users: (n, a, b) -> difference per user d = a - b, theta = sum d / sum n
    names = ["n", "a", "b"]
    V = np.array([[1, 1.0, 0.0], [1, 0.0, 0.0], [1, 1.0, 1.0], [1, 1.0, 0.0]])
    m = Moments.from_user_totals(V, names)
    e = difference_estimate(m, Ratio({"a": 1}, {"n": 1}), Ratio({"b": 1}, {"n": 1}))
    d = V[:, 1] - V[:, 2]
    assert e.estimate == pytest.approx(d.mean())
    assert e.se == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)))


def _numeric_influence_se(V, names, ratios, f):
    """se from numerically differentiated per-user weights (independent of the delta code)."""
    U = V.shape[0]

    def value(w):
        m = Moments(U, (w[:, None] * V).sum(0), np.zeros((V.shape[1],) * 2), tuple(names))
        th = [float(m.vector(r.num) @ m.S / (m.vector(r.den) @ m.S)) for r in ratios]
        return f(np.array(th))

    base = value(np.ones(U))
    phi = np.empty(U)
    h = 1e-6
    for u in range(U):
        w = np.ones(U)
        w[u] += h
        phi[u] = (value(w) - base) / h
    return base, np.sqrt(U / (U - 1) * np.sum((phi - phi.mean()) ** 2))


def test_share_delta_method_matches_numeric_influence():
    rng = np.random.default_rng(0)
    U = 40
    n = rng.integers(1, 3, U).astype(float)
    V = np.column_stack([n, rng.random(U) * n + 0.4 * n, rng.random(U) * n + 0.8 * n,
                         rng.random(U) * n])
    names = ["n", "seg", "pers", "rand"]
    r = [Ratio({k: 1}, {"n": 1}) for k in ("seg", "pers", "rand")]
    m = Moments.from_user_totals(V, names)
    e = share_estimate(m, *r)
    est, se = _numeric_influence_se(V, names, r, lambda t: (t[0] - t[2]) / (t[1] - t[2]))
    assert e.estimate == pytest.approx(est)
    assert e.se == pytest.approx(se, rel=1e-3)


def test_moments_add_equals_moments_of_union():
    rng = np.random.default_rng(1)
    V = rng.random((10, 3))
    a = Moments.from_user_totals(V[:4], ["n", "x", "y"])
    b = Moments.from_user_totals(V[4:], ["n", "x", "y"])
    c = Moments.from_user_totals(V, ["n", "x", "y"])
    s = a + b
    assert s.n_users == 10
    np.testing.assert_allclose(s.S, c.S)
    np.testing.assert_allclose(s.Q, c.Q)


def test_share_check_warns_only_when_far_from_uniform():
    assert share_check([1000, 1010, 990, 1005])["warning"] is None
    chk = share_check([1000, 1000, 1000, 1400])
    assert chk["warning"] is not None and chk["worst_index"] == 3
    assert chk["p_value"] < 1e-3
    # significant but immaterial deviations on huge data do not warn
    assert share_check([1_000_000, 1_000_000, 1_000_000, 1_010_000])["warning"] is None


def test_propensity_balance():
    # 4 creatives shown with p = .25 each, 100 rows each: 1/p sums to 400 per creative
    ok = propensity_balance([400.0] * 4, [1600.0] * 4, 400)
    assert ok["warning"] is None and ok["balance"] == [1.0] * 4
    bad = propensity_balance([400.0, 400.0, 400.0, 800.0], [1600.0, 1600.0, 1600.0, 6400.0], 400)
    assert bad["warning"] is not None and bad["worst_index"] == 3
