"""An allocation (the ``allocation.json`` content of ``segment allocate``) as pandas tables.

What the coarse-personalization notebook displays: the offered treatments with their head counts
and shares against the capacity limits and their dual prices; the value-vs-S curve (share of full
personalization with at most S treatments, in-sample values); and, with out-of-fold values, the
held-out doubly-robust value of the allocation beside full personalization and the baselines
(95% intervals clustered by user, ``transport/heldout.py``), with the share of full
personalization's gain over random that the allocation recoups.
"""
from __future__ import annotations


def _est(e: dict | None) -> tuple:
    e = e or {}
    return e.get("estimate"), e.get("ci_low"), e.get("ci_high")


def offered(result: dict):
    """One row per offered treatment: users, share, min/max share, whether the limits hold, price."""
    import pandas as pd

    plan, limits = result["plan"], result["limits"]
    return pd.DataFrame([{"treatment": t, "users": limits[t]["users"], "share": limits[t]["share"],
                          "min_share": limits[t]["min_share"], "max_share": limits[t]["max_share"],
                          "within_limits": limits[t]["within_limits"], "price": plan["prices"][t]}
                         for t in plan["offered"]])


def curve(result: dict):
    """One row per S = 1..max_treatments: the offered set, total value, share of full."""
    import pandas as pd

    return pd.DataFrame([{"S": r["S"], "offered": ", ".join(r.get("offered") or []),
                          "value": r.get("value"), "share_of_full": r.get("share_of_full")}
                         for r in result["plan"]["curve"]], columns=["S", "offered", "value", "share_of_full"])


def heldout(result: dict):
    """One row per policy (allocation first): held-out DR value per exposure in value units and
    response rate, each with its 95% CI, and the allocation minus that policy (paired over users).
    Empty without out-of-fold values."""
    import pandas as pd

    from segmentation.transport.heldout import LABELS

    cols = ["policy", "label", "value", "value_ci_low", "value_ci_high", "response_rate",
            "response_rate_ci_low", "response_rate_ci_high", "allocation_minus",
            "allocation_minus_ci_low", "allocation_minus_ci_high"]
    ho = result.get("heldout")
    if not ho:
        return pd.DataFrame(columns=cols)
    rows = []
    for P, row in ho["policies"].items():
        r = {"policy": P, "label": LABELS.get(P, P)}
        r["value"], r["value_ci_low"], r["value_ci_high"] = _est(row["value"])
        r["response_rate"], r["response_rate_ci_low"], r["response_rate_ci_high"] = _est(row["response_rate"])
        r["allocation_minus"], r["allocation_minus_ci_low"], r["allocation_minus_ci_high"] = (
            _est(ho["allocation_minus"].get(P)) if P in ho["allocation_minus"] else (0.0, None, None))
        rows.append(r)
    return pd.DataFrame(rows, columns=cols)


def recouped(result: dict):
    """Share of full personalization: in sample (the plan's values) and held out (DR, with CI)."""
    import pandas as pd

    rows = [{"quantity": "share of full, in-sample values", "estimate": result["plan"].get("share_of_full"),
             "ci_low": None, "ci_high": None}]
    ho = result.get("heldout") or {}
    if ho.get("share_of_full"):
        e, lo, hi = _est(ho["share_of_full"])
        rows.append({"quantity": "share of full personalization's gain over random, held out (DR)",
                     "estimate": e, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)
