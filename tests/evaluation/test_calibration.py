"""Out-of-fold calibration sums and the fusion test (``evaluation/calibration.py``)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from segmentation.evaluation.calibration import calibration_sums, evidence, flagged_lines, heterogeneity
from segmentation.oracle.local import LocalOracle
from segmentation.selection.cv import cross_validate
from segmentation.solver.structure import SegmentStructure

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "selection"))
from base_rate_testdata import base_rate_campaign  # noqa: E402


def _direct(d, fold_betas, F, K):
    """O, E, V per (fold, creative) from the rows themselves."""
    O, E, V = np.zeros((F, K)), np.zeros((F, K)), np.zeros((F, K))
    for f in range(F):
        m = d["fold"] == f
        X = np.column_stack([np.ones(m.sum()), d["X"][m]])
        c = d["creative"][m]
        p = 1.0 / (1.0 + np.exp(-np.einsum("ij,ij->i", X, fold_betas[f][c])))
        np.add.at(O[f], c, d["y"][m])
        np.add.at(E[f], c, p)
        np.add.at(V[f], c, p * (1 - p))
    return O, E, V


@pytest.fixture(scope="module")
def campaign():
    return base_rate_campaign(20_000, seed=1, n_folds=4)


def test_sums_equal_a_direct_computation(campaign):
    st, oracle, d = campaign
    rng = np.random.default_rng(0)
    betas = d["beta"][None] + 0.05 * rng.normal(size=(4, *d["beta"].shape))
    s = calibration_sums(oracle, betas)
    O, E, V = _direct(d, betas, 4, st.n_creatives)
    np.testing.assert_array_equal(s.observed, O)
    np.testing.assert_allclose(s.expected, E, rtol=1e-10)
    np.testing.assert_allclose(s.variance, V, rtol=1e-10)
    assert s.reliability.sum() == len(d["y"])
    assert s.reliability[:, 1].sum() == d["y"].sum()


def test_unpaired_rule_fusion_is_flagged_and_default_is_not(campaign):
    st, oracle, d = campaign
    for rule, expect_flag in (("1se_unpaired", True), ("1se", False)):
        res = cross_validate(oracle, st, [0.0, 0.1], n_lambda=12, rule=rule, progress=None,
                             relax=None if rule == "1se_unpaired" else (0, .25, .5, .75, 1))
        ev = evidence(calibration_sums(oracle, np.stack([f.beta for f in res.fold_fits])),
                      st, res.final_fit.fused)
        seg = {s["segment"]: s for s in ev["segments"]}
        assert ("S" in ev["flagged"]) == expect_flag, (rule, seg)
        assert not seg["T"]["flagged"] and seg["T"]["p_value"] > 0.01      # T's creatives are alike
        if expect_flag:
            assert seg["S"]["fused"] == ["s1", "s2", "s3"] and seg["S"]["p_value"] < 1e-10
            assert any(line.startswith("WARNING: segment S") for line in flagged_lines(ev))
            s1 = next(c for c in ev["creatives"] if c["creative"] == "s1")
            assert s1["difference_ci"][0] < s1["difference"] < s1["difference_ci"][1]
            assert s1["difference"] < -0.015 and s1["difference_ci"][1] < 0   # observed below predicted
        else:
            assert not flagged_lines(ev)
            # within sampling noise (SE ~0.34 points at 20k rows a creative)
            assert ev["max_abs_difference"] < 0.01
            assert all(abs(c["z"]) < 3 for c in ev["creatives"]), ev["creatives"]
        rel = ev["reliability"]
        assert len(rel) == 10 and sum(b["rows"] for b in rel) == len(d["y"])
        assert all(abs(b["predicted"] - b["observed"]) < 0.03 for b in rel)


def test_fusion_test_holds_its_level_under_the_null():
    """With the true coefficients as the fold models and three creatives that respond alike,
    the test rejects at about its nominal rate (300 replications)."""
    st = SegmentStructure.from_mapping({"A": ["a1", "a2", "a3"], "B": ["b1", "b2"]})
    beta = np.array([[-0.7, 0.4, -0.3]] * 3 + [[0.2, -0.5, 0.1]] * 2)
    rng = np.random.default_rng(7)
    pvals = []
    for _ in range(300):
        n = 3000
        X = rng.normal(size=(n, 2))
        cr = rng.integers(0, 5, size=n)
        fold = rng.integers(0, 3, size=n)
        eta = beta[cr, 0] + np.einsum("ij,ij->i", X, beta[cr, 1:])
        y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
        orc = LocalOracle.from_arrays(X, y, cr, fold, n_creatives=5, n_folds=3)
        ev = evidence(calibration_sums(orc, np.stack([beta] * 3)), st, np.ones(5, bool))
        pvals.append(next(s for s in ev["segments"] if s["segment"] == "A")["p_value"])
    rate = np.mean(np.array(pvals) < 0.05)
    assert 0.02 <= rate <= 0.09, rate


def test_heterogeneity_statistic():
    assert heterogeneity(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == pytest.approx(0.0)
    assert heterogeneity(np.array([2.0, -2.0]), np.array([1.0, 1.0])) == pytest.approx(8.0)
    assert heterogeneity(np.array([5.0]), np.array([1.0])) == 0.0
