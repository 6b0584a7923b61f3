"""Cross-fitted OPE on Spark against a planted campaign with known truth."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from segmentation.evaluation.estimators import Moments
from segmentation.evaluation.policies import row_terms


def test_spark_moments_equal_the_numpy_path(planted, planted_truth):
    res = planted["result"]
    fr = planted_truth["frame"]
    from segmentation.evaluation import spark as sp

    shares = planted["prepared"].manifest.counts.sum(0) / planted["prepared"].manifest.counts.sum()
    a = fr[sp.CREATIVE_IDX].to_numpy()
    T, names = row_terms(planted_truth["z"], fr[sp.RESPONSE].to_numpy(), a, shares[a],
                         planted_truth["fold"], res.fold_models)
    m = Moments.from_rows(T, fr["user_id"].to_numpy(), names)
    assert m.names == res.moments.names
    assert m.n_users == res.moments.n_users
    np.testing.assert_allclose(res.moments.S, m.S, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.moments.Q, m.Q, rtol=1e-9, atol=1e-7)


def test_every_policy_is_evaluated_with_three_estimators(planted):
    s = planted["result"].summary
    assert list(s["policies"]) == ["segment", "segment_best", "personalized", "per_segment_models",
                                   "kmeans", "best_single", "random"]
    for P, row in s["policies"].items():
        assert set(row["value"]) == {"ipw", "snipw", "dr"}
        for e in row["value"].values():
            assert e.ci_low < e.estimate < e.ci_high
    assert s["policies"]["random"]["lift"] == {}


def test_dr_estimates_cover_the_true_policy_values(planted, planted_truth):
    """DR within its 95% CI of the true value (one seed; coverage over 200 seeds is in the
    benchmark): exact for the main policies, 1.5 half-widths for all (multiplicity)."""
    s = planted["result"].summary
    truth = planted_truth["values"]
    for P in ("segment", "personalized", "random", "best_single"):
        assert s["policies"][P]["value"]["dr"].covers(truth[P]), (P, truth[P], s["policies"][P]["value"]["dr"])
    for P, row in s["policies"].items():
        e = row["value"]["dr"]
        assert abs(e.estimate - truth[P]) <= 1.5 * (e.ci_high - e.estimate), P
        for est in ("ipw", "snipw"):
            e = row["value"][est]
            assert abs(e.estimate - truth[P]) <= 1.5 * (e.ci_high - e.estimate), (P, est)


def test_segment_beats_baselines_and_recoups_most_of_personalized(planted, planted_truth):
    s = planted["result"].summary
    truth = planted_truth["values"]
    # true values (known coefficients) and estimates agree on the ranking
    assert truth["segment"] > truth["kmeans"] and truth["segment"] > truth["best_single"]
    lift = {P: s["policies"][P]["lift"]["dr"] for P in ("segment", "kmeans", "best_single", "personalized")}
    assert lift["segment"].estimate > lift["kmeans"].ci_high
    assert lift["segment"].estimate > lift["best_single"].ci_high
    # paired differences: significantly better than both baselines
    for P in ("kmeans", "best_single"):
        d = s["segment_minus"][P]["dr"]
        assert d.ci_low > 0, P
        assert abs(d.estimate - (truth["segment"] - truth[P])) <= 1.5 * (d.ci_high - d.estimate)
    share = s["recoup_share"]["dr"]
    true_share = (truth["segment"] - truth["random"]) / (truth["personalized"] - truth["random"])
    assert share.estimate > 0.7 and true_share > 0.7
    assert share.ci_low < share.estimate < share.ci_high


def test_uplift_per_segment_covers_truth(planted, planted_truth):
    s = planted["result"].summary
    dec, z, beta = planted_truth["dec"], planted_truth["z"], planted_truth["beta"]
    mu = expit(z @ beta.T)
    fm = planted["result"].fold_models
    U = fm.uniform_over_segment()
    true_upl = (mu @ U.T)[np.arange(len(z)), dec["segment"]] - mu[:, fm.control]
    st = planted["prepared"].structure
    for j in fm.assignable:
        mem = dec["segment"] == j
        e = s["uplift"]["segments"][st.segments[j]]["dr_uplift"]
        assert abs(e.estimate - true_upl[mem].mean()) <= 1.5 * (e.ci_high - e.estimate), st.segments[j]
        # predicted per-user uplift tracks the true one (plug-in, out of fold)
        assert np.corrcoef(dec["uplift"][mem], true_upl[mem])[0, 1] > 0.7
    # sleeping dogs exist; the predicted share is a plug-in classification and is biased low
    # where the true uplift is near zero (penalised slopes are shrunk): measured 6% predicted vs
    # 28% true in seg1 here, so only the ordering is asserted
    o = s["uplift"]["overall"]
    assert 0 < o["share_negative"].estimate < 1
    true_neg = true_upl < 0
    assert (true_upl[dec["uplift"] < 0] < 0).mean() > 0.5      # most predicted dogs are real
    assert true_neg.mean() >= o["share_negative"].estimate
    e = o["dr_uplift_of_predicted_negative"]
    assert e.ci_low < e.estimate < e.ci_high   # its coverage is measured in the benchmark


def test_breakeven_targeting_profit_covers_truth_and_wins(planted, planted_truth):
    t = planted["result"].summary["targeting"]
    dec, z, beta = planted_truth["dec"], planted_truth["z"], planted_truth["beta"]
    mu = expit(z @ beta.T)
    V, C = 10.0, 0.3
    true_target = (V * (dec["probs"]["target"] * mu).sum(1) - C * dec["treat"]).mean()
    true_all = (V * (dec["probs"]["segment"] * mu).sum(1) - C).mean()
    true_none = (V * mu[:, planted["result"].fold_models.control]).mean()
    for k, truth in (("target", true_target), ("everyone", true_all), ("no_one", true_none)):
        e = t["profit"][k]
        assert abs(e.estimate - truth) <= 1.5 * (e.ci_high - e.estimate), k
    assert 0 < t["share_targeted"].estimate < 1
    assert t["share_targeted"].estimate == pytest.approx(dec["treat"].mean(), abs=1e-9)
    # targeting truly beats treating everyone here (sleeping dogs, costly contacts); the paired
    # difference covers it (its sign is not significant at 20k users)
    assert true_target > true_all
    e = t["target_minus_everyone"]
    assert abs(e.estimate - (true_target - true_all)) <= 1.5 * (e.ci_high - e.estimate)


def test_propensity_column_path_matches_numpy(spark, planted, planted_truth):
    """With data.propensity_col the logged propensity of each row is used (Spark = numpy)."""
    from segmentation.evaluation import spark as sp

    fr = planted_truth["frame"].copy()
    rng = np.random.default_rng(0)
    fr[sp.PROPENSITY] = rng.uniform(0.05, 0.15, len(fr))
    frame = spark.createDataFrame(fr).repartition(2)
    res = planted["result"]
    enc = planted["prepared"].encoding
    got = sp.term_moments(frame, user_col="user_id", encoding=enc, shares=None,
                          fold_models=res.fold_models)
    T, names = row_terms(planted_truth["z"], fr[sp.RESPONSE].to_numpy(), fr[sp.CREATIVE_IDX].to_numpy(),
                         fr[sp.PROPENSITY].to_numpy(), planted_truth["fold"], res.fold_models)
    want = Moments.from_rows(T, fr["user_id"].to_numpy(), names)
    np.testing.assert_allclose(got.S, want.S, rtol=1e-9)
    ps = sp.propensity_stats(frame.withColumnRenamed(sp.PROPENSITY, "p_log")
                                  .withColumn("creative", frame[sp.CREATIVE_IDX].cast("string")),
                             "p_log", "creative", [str(k) for k in range(11)])
    inv = 1.0 / fr[sp.PROPENSITY].to_numpy()
    np.testing.assert_allclose(ps["inv_p_sum"].sum(), inv.sum())
