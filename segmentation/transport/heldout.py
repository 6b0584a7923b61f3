"""The allocation's value on held-out randomized exposures, beside the evaluation's baselines.

With ``transport.out_of_fold`` every user of the exposures is scored by a fold model that did not
see them (``evaluation.crossfit``), the allocation is solved on those out-of-fold values, and the
evaluation (``evaluation.run.run_evaluation``) evaluates it as one more policy with the same
doubly-robust terms and user-clustered 95% intervals (``evaluation.estimators``), next to
``full`` (every user their best treatment by out-of-fold value, no limits: full personalization
over the same treatments), the evaluation's ``segment``, ``kmeans``, ``best_single``,
``personalized`` and ``random`` policies (and ``control`` with a control arm).

The value of a policy P per exposure, in value units, is

    V(P) = value_per_response * DR response rate of P - expected cost of P,

a ratio of per-user sums (terms ``dr:P`` and ``cost:P`` over ``n``). The share of full
personalization recouped is (V(allocation) - V(random)) / (V(full) - V(random)), with a
delta-method interval (``estimators.share_estimate``); lifts are paired differences over users.
The prices that decide the allocation are computed from every user's out-of-fold values, so a
K-vector of prices is shared across folds (the per-user values never are).
"""
from __future__ import annotations

from segmentation.evaluation.estimators import (Moments, Ratio, difference_estimate, ratio_estimate,
                                                share_estimate, value_ratio)
from segmentation.evaluation.summary import to_plain

ALLOCATION, FULL = "allocation", "full"
ORDER = (ALLOCATION, FULL, "personalized", "segment", "segment_best", "kmeans", "best_single",
         "per_segment_models", "random", "control")
BASE = "random"

LABELS = {
    ALLOCATION: "allocation (S treatments, limits)",
    FULL: "full personalization (all treatments, no limits)",
    "personalized": "personalized by response (evaluation's ceiling)",
    "segment": "segment (this model)",
    "segment_best": "segment, best creative",
    "kmeans": "K-means on covariates",
    "best_single": "best single creative",
    "per_segment_models": "per-segment models",
    "random": "random (uniform)",
    "control": "control (nobody treated)",
}


def value_units(P: str, value_per_response: float, with_cost: bool) -> Ratio:
    num = {f"dr:{P}": float(value_per_response)}
    if with_cost:
        num[f"cost:{P}"] = -1.0
    return Ratio(num, {"n": 1.0})


def heldout_summary(m: Moments, value_per_response: float) -> dict:
    """Values (value units and response rate, DR), allocation minus each policy, share of full."""
    present = [P for P in ORDER if f"dr:{P}" in m.names]
    with_cost = any(name.startswith("cost:") for name in m.names)
    val = {P: value_units(P, value_per_response, with_cost) for P in present}
    out = {
        "n_users": int(m.n_users), "n_exposures": float(m.S[m.index("n")]),
        "value_per_response": float(value_per_response), "baseline": BASE,
        "policies": {P: {"value": ratio_estimate(m, val[P]),
                         "response_rate": ratio_estimate(m, value_ratio(P, "dr"))} for P in present},
        "allocation_minus": {P: difference_estimate(m, val[ALLOCATION], val[P])
                             for P in present if P != ALLOCATION},
    }
    if BASE in present and FULL in present:
        out["share_of_full"] = share_estimate(m, val[ALLOCATION], val[FULL], val[BASE])
    return to_plain(out)
