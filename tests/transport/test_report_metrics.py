"""allocate's MLflow metrics from a result with a held-out section (estimates with CIs)."""
from segmentation.transport.report import flat_metrics


def test_heldout_estimates_and_cis_become_metrics():
    plan = {"total_value": 1.0, "full_value": 2.0, "mean_value": 0.5, "duality_gap": 0.0,
            "share_of_full": 0.9, "n_users": 2, "offered": ["a"], "shares": {"a": 1.0},
            "prices": {"a": 0.0}, "curve": [{"S": 1, "value": 1.0, "share_of_full": 0.5}]}
    heldout = {"policies": {"allocation": {"value": {"estimate": 1.0, "ci_low": 0.5, "ci_high": 1.5},
                                           "response_rate": None}},
               "allocation_minus": {"random": {"estimate": 0.2, "ci_low": None}},
               "share_of_full": {"estimate": 0.7, "ci_low": 0.6, "ci_high": 0.8}}
    m = {k: v for k, v, _ in flat_metrics({"plan": plan, "seconds": 1.0, "heldout": heldout})}
    assert m["heldout.allocation.value_dr_ci_low"] == 0.5
    assert m["heldout.allocation.value_dr_ci_high"] == 1.5
    assert m["heldout.allocation_minus_random_dr"] == 0.2
    assert "heldout.allocation_minus_random_dr_ci_low" not in m
    assert m["heldout.share_of_full_dr_ci_high"] == 0.8
