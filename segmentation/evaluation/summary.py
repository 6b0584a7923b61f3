"""From the aggregated moments of the per-row terms to the numbers the report shows (numpy).

All intervals are 95%, normal, clustered by user (``estimators`` module docstring); lifts and
profit differences are paired (the same users under both policies).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from segmentation.evaluation.estimators import (ESTIMATORS, Moments, Ratio, difference_estimate,
                                                ratio_estimate, share_estimate, value_ratio)
from segmentation.evaluation.policies import POLICIES

BASELINE = "random"


def policy_table(m: Moments, policies: Sequence[str]) -> dict:
    """{policy: {"value": {est: Estimate}, "lift": {est: Estimate}}} for the POLICIES present."""
    out = {}
    for P in policies:
        if P not in POLICIES:
            continue
        row = {"value": {}, "lift": {}}
        for e in ESTIMATORS:
            row["value"][e] = ratio_estimate(m, value_ratio(P, e))
            if P != BASELINE:
                row["lift"][e] = difference_estimate(m, value_ratio(P, e), value_ratio(BASELINE, e))
        out[P] = row
    return out


def recoup_share(m: Moments, policies: Sequence[str], policy: str = "segment",
                 ceiling: str = "personalized") -> dict:
    """{est: Estimate} of (V_policy - V_random) / (V_ceiling - V_random)."""
    if policy not in policies or ceiling not in policies:
        return {}
    return {e: share_estimate(m, value_ratio(policy, e), value_ratio(ceiling, e),
                              value_ratio(BASELINE, e)) for e in ESTIMATORS}


def segment_versus(m: Moments, policies: Sequence[str], policy: str = "segment") -> dict:
    """{other policy: {est: Estimate}} of V_policy - V_other, paired over users: does the
    segmentation beat each alternative, and by how much."""
    if policy not in policies:
        return {}
    return {P: {e: difference_estimate(m, value_ratio(policy, e), value_ratio(P, e)) for e in ESTIMATORS}
            for P in policies if P in POLICIES and P not in (policy, BASELINE)}


def uplift_table(m: Moments, segments: dict[int, str]) -> dict:
    """Per assignable segment (its out-of-fold members): share of users, predicted mean uplift
    over control, DR-estimated uplift (showing the segment's creatives vs control), share with
    negative predicted uplift; and the same over all users."""
    out = {"overall": {
        "predicted_uplift": ratio_estimate(m, Ratio({"upl": 1.0}, {"n": 1.0})),
        "dr_uplift": difference_estimate(m, value_ratio("segment", "dr"), value_ratio("control", "dr")),
        "share_negative": ratio_estimate(m, Ratio({"neg": 1.0}, {"n": 1.0})),
        "dr_uplift_of_predicted_negative": ratio_estimate(m, Ratio({"negdr": 1.0}, {"neg": 1.0})),
    }, "segments": {}}
    for j, name in segments.items():
        mem = {f"mem:{j}": 1.0}
        out["segments"][name] = {
            "share_of_rows": ratio_estimate(m, Ratio(mem, {"n": 1.0})),
            "predicted_uplift": ratio_estimate(m, Ratio({f"upl:{j}": 1.0}, mem)),
            "dr_uplift": ratio_estimate(m, Ratio({f"drT:{j}": 1.0, f"drC:{j}": -1.0}, mem)),
            "share_negative": ratio_estimate(m, Ratio({f"neg:{j}": 1.0}, mem)),
        }
    return out


def targeting_table(m: Moments, value: float, cost: float) -> dict:
    """Expected profit per user-exposure (value x response - cost x contact), DR-estimated, of
    breakeven targeting, treating everyone (with their segment) and treating no one, with the
    paired differences and the share targeted."""
    profit = {
        "target": Ratio({"dr:target": value, "treat": -cost}, {"n": 1.0}),
        "everyone": Ratio({"dr:segment": value, "n": -cost}, {"n": 1.0}),
        "no_one": Ratio({"dr:control": value}, {"n": 1.0}),
    }
    return {
        "value_per_response": float(value),
        "cost_per_contact": float(cost),
        "profit": {k: ratio_estimate(m, r) for k, r in profit.items()},
        "target_minus_everyone": difference_estimate(m, profit["target"], profit["everyone"]),
        "target_minus_no_one": difference_estimate(m, profit["target"], profit["no_one"]),
        "share_targeted": ratio_estimate(m, Ratio({"treat": 1.0}, {"n": 1.0})),
    }


def summarize(m: Moments, policies: Sequence[str], *, segments: dict[int, str] | None = None,
              control: bool = False, value_per_response: float = 1.0,
              cost_per_contact: float = 0.0) -> dict:
    """Everything in one nested dict of ``Estimate`` objects (``to_plain`` makes it JSON)."""
    out = {"n_users": int(m.n_users), "n_rows": float(m.S[m.index("n")]),
           "policies": policy_table(m, policies), "recoup_share": recoup_share(m, policies),
           "segment_minus": segment_versus(m, policies)}
    if control:
        out["uplift"] = uplift_table(m, segments or {})
        out["targeting"] = targeting_table(m, value_per_response, cost_per_contact)
    return out


def to_plain(obj):
    """Nested dicts of Estimates -> nested dicts of floats (JSON-ready)."""
    if hasattr(obj, "to_dict") and hasattr(obj, "estimate"):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj
