"""An evaluation result (``EvaluationResult.to_dict()``) as tables (pandas) and figures.

Tables: policy values and lifts over ``random`` with 95% CIs (per estimator: DR, IPW, SNIPW),
uplift over the control arm per segment, breakeven targeting profits. Figures (matplotlib
``Figure`` objects built without pyplot, so a notebook shows them with ``display(fig)``): the DR
policy values with their CIs, predicted vs DR uplift per segment with CIs, and the profit of
targeting, treating everyone and no one with CIs. Rates are per exposure; every interval is the
one in the result (clustered by user, cross-fitted).
"""
from __future__ import annotations

from segmentation.evaluation.report import LABELS

ESTIMATORS = ("dr", "ipw", "snipw")


def _est(e: dict | None) -> tuple:
    e = e or {}
    return e.get("estimate"), e.get("ci_low"), e.get("ci_high")


def policy_values(result: dict):
    """One row per policy: value and lift over random (estimate, ci_low, ci_high) per estimator."""
    import pandas as pd

    rows = []
    for P, row in result["summary"]["policies"].items():
        r = {"policy": P, "label": LABELS.get(P, P)}
        for est in ESTIMATORS:
            r[f"value_{est}"], r[f"value_{est}_ci_low"], r[f"value_{est}_ci_high"] = _est(row["value"].get(est))
            r[f"lift_{est}"], r[f"lift_{est}_ci_low"], r[f"lift_{est}_ci_high"] = _est((row["lift"] or {}).get(est))
        rows.append(r)
    return pd.DataFrame(rows)


def uplift(result: dict):
    """One row per segment (and ``all users``): share of exposures, predicted and DR uplift over
    control, share of predicted sleeping dogs, each with its CI; empty without a control arm."""
    import pandas as pd

    u = result["summary"].get("uplift")
    if not u:
        return pd.DataFrame(columns=["segment"])
    rows = []
    for name, r in [*u["segments"].items(), ("all users", u["overall"])]:
        out = {"segment": name}
        for key in ("share_of_rows", "predicted_uplift", "dr_uplift", "share_negative"):
            if key in r:
                out[key], out[f"{key}_ci_low"], out[f"{key}_ci_high"] = _est(r[key])
        rows.append(out)
    return pd.DataFrame(rows)


def targeting(result: dict):
    """Breakeven targeting: expected profit per user-exposure of targeting, treating everyone and
    no one, the two differences and the share targeted (estimate and CI); empty without control."""
    import pandas as pd

    t = result["summary"].get("targeting")
    if not t:
        return pd.DataFrame(columns=["quantity"])
    items = [(f"profit: {k}", v) for k, v in t["profit"].items()]
    items += [("targeting - everyone", t["target_minus_everyone"]),
              ("targeting - no one", t["target_minus_no_one"]),
              ("share targeted", t["share_targeted"])]
    return pd.DataFrame([{"quantity": q, "estimate": e, "ci_low": lo, "ci_high": hi}
                         for q, (e, lo, hi) in ((q, _est(v)) for q, v in items)])


# ---- figures -------------------------------------------------------------------------------
def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _errorbars(ax, labels, est, lo, hi, scale: float, horizontal: bool = True, **kw):
    import numpy as np

    e = np.array([np.nan if v is None else v * scale for v in est], dtype=float)
    lo = np.array([np.nan if v is None else v * scale for v in lo], dtype=float)
    hi = np.array([np.nan if v is None else v * scale for v in hi], dtype=float)
    err = [np.nan_to_num(e - lo), np.nan_to_num(hi - e)]
    pos = np.arange(len(labels))
    if horizontal:
        ax.errorbar(e, pos, xerr=err, fmt="o", capsize=3, **kw)
        ax.set_yticks(pos, labels, fontsize=8)
    else:
        ax.errorbar(pos, e, yerr=err, fmt="o", capsize=3, **kw)
        ax.set_xticks(pos, labels, fontsize=8, rotation=30, ha="right")
    return pos


def policy_values_figure(result: dict, estimator: str = "dr"):
    """Each policy's value (response rate per exposure, %) with its 95% CI."""
    df = policy_values(result)
    df = df[df[f"value_{estimator}"].notna()]
    fig = _figure((7.5, max(3.0, 0.45 * len(df) + 1.5)))
    ax = fig.subplots()
    _errorbars(ax, list(df["label"]), df[f"value_{estimator}"], df[f"value_{estimator}_ci_low"],
               df[f"value_{estimator}_ci_high"], 100.0)
    rnd = df[df["policy"] == "random"]
    if len(rnd):
        ax.axvline(100.0 * float(rnd[f"value_{estimator}"].iloc[0]), color="0.6", lw=1, ls="--")
    ax.invert_yaxis()
    ax.set_xlabel(f"response rate, % ({estimator.upper()}, 95% CI; dashed: random)")
    ax.set_title("Policy values, cross-fitted off-policy estimates")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def uplift_figure(result: dict):
    """Per segment: predicted and DR-estimated uplift over control (percentage points, 95% CI)."""
    import numpy as np

    df = uplift(result)
    fig = _figure((7.5, max(3.0, 0.5 * len(df) + 1.5)))
    ax = fig.subplots()
    if len(df):
        pos = np.arange(len(df))
        for key, shift, color, label in (("predicted_uplift", -0.12, "C0", "predicted (model)"),
                                         ("dr_uplift", 0.12, "C1", "doubly robust")):
            e, lo, hi = (df[key] * 100, df[f"{key}_ci_low"] * 100, df[f"{key}_ci_high"] * 100)
            ax.errorbar(e, pos + shift, xerr=[np.nan_to_num(e - lo), np.nan_to_num(hi - e)], fmt="o",
                        capsize=3, color=color, label=label)
        ax.set_yticks(pos, list(df["segment"]), fontsize=8)
        ax.axvline(0.0, color="0.6", lw=1)
        ax.invert_yaxis()
        ax.legend(fontsize=8)
    ax.set_xlabel("uplift over control, percentage points (95% CI)")
    ax.set_title("Uplift of each segment's creatives over the control arm")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def targeting_figure(result: dict):
    """Profit per user-exposure of breakeven targeting, treating everyone and no one (95% CI)."""
    df = targeting(result)
    df = df[df["quantity"].str.startswith("profit: ")]
    fig = _figure((6.5, 3.2))
    ax = fig.subplots()
    if len(df):
        _errorbars(ax, [q.removeprefix("profit: ") for q in df["quantity"]], df["estimate"],
                   df["ci_low"], df["ci_high"], 1.0, color="C2")
        ax.invert_yaxis()
        t = result["summary"]["targeting"]
        ax.set_title(f"Breakeven targeting (value per response {t['value_per_response']:g}, "
                     f"cost per contact {t['cost_per_contact']:g})", fontsize=9)
    ax.set_xlabel("expected profit per user-exposure (DR, 95% CI)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
