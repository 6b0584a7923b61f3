"""Out-of-fold evidence behind the model's claims: per-creative calibration and a test of
"these fused creatives respond alike", on rows the fold models never trained on.

Inputs are the F fold models of the chosen procedure (``CVResult.fold_fits``: model f was
selected and fitted without fold f). Two oracle passes, nothing about rows leaves the oracle:

1. Calibration sums. Model f evaluated with fold f as its *only* "training" fold gives, per
   creative c, the gradient of the mean log loss w.r.t. the intercept, (1/N_f) sum (p_i - y_i),
   and the intercept's curvature, (1/N_f) sum p_i (1 - p_i). With the observed positives O_fc
   (counted when the data were prepared) that is

       E_fc = O_fc + N_f * grad[f, c, 0]       (sum of predicted probabilities),
       V_fc = N_f * hess_diag[f, c, 0]          (sum of p (1 - p)).

2. Reliability. Model f's held-out predictions on fold f, binned by linear predictor (the
   histogram the held-out AUC is computed from), summed over folds.

Per creative: observed rate O/n, mean predicted rate E/n and their difference with a 95%
interval (O - E) / n +- 1.96 sqrt(V) / n: given out-of-fold predictions p_i, O has mean E and
variance V when the model is right.

Fusion test. For a segment whose final model fuses a set S of >= 2 creatives, the null
hypothesis is that they respond alike: given the out-of-fold predictions, no creative in S
needs its own shift of the linear predictor beyond one shift common to S. The score test of
the creative-specific shifts a_c (c in S) with the common shift as nuisance, on fold f, is

    T_f = sum_{c in S} r_fc^2 / V_fc - (sum_{c in S} r_fc)^2 / sum_{c in S} V_fc,
    r_fc = O_fc - E_fc,

approximately chi-square with |S| - 1 degrees of freedom (Cochran's heterogeneity statistic).
The folds are disjoint, so T = sum_f T_f ~ chi2(F (|S| - 1)). It detects creatives whose
response *level* differs (the failure that matters most: a fused creative predicted at the
segment's rate while it responds at another); creatives that differ only in how they respond
to covariates, with equal rates on average, are not what it measures. A segment is *flagged*
when its p-value is below 0.05 / (number of segments tested) (Bonferroni). If a fold model
did not fuse all of S its own predictions already separate them; the test is then of the
procedure's predictions, and conservative.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
FLAG_LEVEL = 0.05


@dataclass
class CalibrationSums:
    n: np.ndarray          # (F, K) rows
    observed: np.ndarray   # (F, K) positives O
    expected: np.ndarray   # (F, K) sum of predicted probabilities E
    variance: np.ndarray   # (F, K) sum of p (1 - p) V
    reliability: np.ndarray  # (B, 2) held-out rows by eta bin, [negatives, positives]


def calibration_sums(oracle, fold_betas: np.ndarray, label: str = "calibration") -> CalibrationSums:
    """The two passes of the module docstring for fold models ``fold_betas`` (F, K, p)."""
    betas = np.asarray(fold_betas, dtype=np.float64)
    F = oracle.n_folds
    if betas.shape[0] != F:
        raise ValueError(f"need one model per fold ({F}); got {betas.shape[0]}")
    own = np.eye(F, dtype=bool)
    r = oracle.evaluate(betas, own, curvature="diagonal",
                        label=f"{label}: out-of-fold calibration sums ({F} fold models)")
    n = np.asarray(oracle.counts, dtype=float)
    N = n.sum(axis=1)                                        # (F,)
    O = np.asarray(oracle.positives, dtype=float)
    E = O + N[:, None] * r.grad[:, :, 0]
    V = N[:, None] * r.hess_diag[:, :, 0]
    h = oracle.evaluate(betas, ~own, curvature=False, heldout="only",
                        label=f"{label}: out-of-fold reliability histogram")
    hist = np.zeros(h.heldout_hist.shape[1:]) if h.heldout_hist is not None else np.zeros((0, 2))
    if h.heldout_hist is not None:
        hist = h.heldout_hist.sum(axis=0)
    return CalibrationSums(n=n, observed=O, expected=np.clip(E, 0.0, None), variance=V, reliability=hist)


def heterogeneity(r: np.ndarray, v: np.ndarray) -> float:
    """Cochran-type score statistic sum r^2/v - (sum r)^2 / sum v over the entries with v > 0."""
    ok = v > 0
    r, v = r[ok], v[ok]
    if r.size < 2:
        return 0.0
    return float(np.sum(r * r / v) - np.sum(r) ** 2 / np.sum(v))


def chi2_sf(x: float, df: int) -> float:
    from scipy.stats import chi2

    return float(chi2.sf(x, df)) if df > 0 else math.nan


def evidence(sums: CalibrationSums, structure, fused: np.ndarray) -> dict:
    """Plain-JSON report: ``creatives`` (per creative calibration), ``segments`` (fusion test
    of each segment with >= 2 fused creatives), ``flagged`` (segments whose fused creatives
    clearly differ), ``reliability`` (bins of predicted probability with observed rates)."""
    n, O, E, V = sums.n, sums.observed, sums.expected, sums.variance
    F = n.shape[0]
    fused = np.asarray(fused, bool)
    creatives = []
    for c, name in enumerate(structure.creatives):
        nc, oc, ec, vc = n[:, c].sum(), O[:, c].sum(), E[:, c].sum(), V[:, c].sum()
        if nc == 0:
            creatives.append({"creative": name, "segment": structure.segments[structure.segment_of[c]],
                              "rows": 0, "fused": bool(fused[c])})
            continue
        diff, se = (oc - ec) / nc, math.sqrt(max(vc, 0.0)) / nc
        creatives.append({
            "creative": name, "segment": structure.segments[structure.segment_of[c]],
            "fused": bool(fused[c]), "rows": int(nc),
            "observed_rate": oc / nc, "predicted_rate": ec / nc,
            "difference": diff, "difference_se": se,
            "difference_ci": [diff - Z95 * se, diff + Z95 * se],
            "z": (oc - ec) / math.sqrt(vc) if vc > 0 else math.nan,
        })
    segments = []
    for j, seg in enumerate(structure.segments):
        members = structure.creatives_of(j)
        if len(members) < 2 or not structure.penalized[j]:
            continue
        S = [int(c) for c in members if fused[c]]
        entry = {"segment": seg, "n_creatives": int(len(members)),
                 "fused": [structure.creatives[c] for c in S]}
        if len(S) >= 2:
            T = sum(heterogeneity(O[f, S] - E[f, S], V[f, S]) for f in range(F))
            df = sum(max(int(np.sum(V[f, S] > 0)) - 1, 0) for f in range(F))
            entry.update({"statistic": T, "df": int(df), "p_value": chi2_sf(T, df)})
        segments.append(entry)
    tested = [s for s in segments if "p_value" in s and np.isfinite(s["p_value"])]
    level = FLAG_LEVEL / max(len(tested), 1)
    for s in tested:
        s["flagged"] = bool(s["p_value"] < level)
    return _json_safe({
        "method": "out-of-fold: fold models fitted without the fold they are scored on",
        "folds": int(F),
        "flag_level": level,
        "creatives": creatives,
        "segments": segments,
        "flagged": [s["segment"] for s in tested if s["flagged"]],
        "reliability": reliability_bins(sums.reliability),
        "max_abs_difference": max((abs(c["difference"]) for c in creatives if "difference" in c),
                                  default=math.nan),
    })


def _json_safe(obj):
    """Plain Python floats/ints/lists, with nan and inf as None (model.json is strict JSON)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def reliability_bins(hist: np.ndarray, n_bins: int = 10) -> list[dict]:
    """Group the eta histogram into ``n_bins`` bins of about equal row count (deciles of the
    predicted probability): mean predicted (bin centres' sigmoid, row-weighted) and observed."""
    from segmentation.oracle.kernel import AUC_BINS, AUC_RANGE

    if hist.size == 0 or hist.sum() == 0:
        return []
    rows = hist.sum(axis=1)
    centres = -AUC_RANGE + (np.arange(AUC_BINS) + 0.5) * (2 * AUC_RANGE / AUC_BINS)
    prob = 1.0 / (1.0 + np.exp(-centres))
    cum = np.cumsum(rows) / rows.sum()
    edges = np.searchsorted(cum, np.linspace(0, 1, n_bins + 1)[1:-1], side="right")
    out = []
    for lo, hi in zip(np.r_[0, edges], np.r_[edges, AUC_BINS]):
        cnt = rows[lo:hi].sum()
        if cnt == 0:
            continue
        out.append({"rows": int(cnt), "predicted": float((prob[lo:hi] * rows[lo:hi]).sum() / cnt),
                    "observed": float(hist[lo:hi, 1].sum() / cnt)})
    return out


def flagged_lines(ev: dict | None) -> list[str]:
    """Console lines for the fit summary."""
    if not ev:
        return []
    lines = []
    for s in ev["segments"]:
        if s.get("flagged"):
            rates = ", ".join(f"{c['creative']} {100 * c['observed_rate']:.1f}% (predicted "
                              f"{100 * c['predicted_rate']:.1f}%)" for c in ev["creatives"]
                              if c["creative"] in s["fused"] and "observed_rate" in c)
            lines.append(f"WARNING: segment {s['segment']}: its fused creatives do not respond alike "
                         f"out of fold (p = {s['p_value']:.2g}, df {s['df']}): {rates}")
    return lines
