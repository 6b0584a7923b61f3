"""A fitted model as tables (pandas): one row per segment, one row per creative.

What a notebook displays and what ``format_summary`` prints: per segment the consistency
``fused / n_j`` (creatives whose coefficients equal the segment's, ``beta_jk = gamma_j``), the
covariates with non-zero ``gamma_j``, the share of users assigned to it; per creative its
segment, whether it is fused and its distance ``||beta_jk - gamma_j||`` (fitting scale).
"""
from __future__ import annotations


def segment_summary(model):
    """pandas DataFrame: segment, creatives, fused, nonzero_covariates, share_of_users, control."""
    import pandas as pd

    shares = model.segment_shares or {}
    ctrl = model.control_segment
    rows = []
    for j, name in enumerate(model.segments):
        members = [c for c in range(len(model.creatives)) if model.segment_of[c] == j]
        rows.append({
            "segment": name,
            "creatives": len(members),
            "fused": int(sum(bool(model.fused[c]) for c in members)),
            "nonzero_covariates": ", ".join(model.nonzero_covariates(j)),
            "share_of_users": None if j == ctrl else shares.get(name),
            "control": j == ctrl,
        })
    return pd.DataFrame(rows)


def creative_summary(model):
    """pandas DataFrame: creative, segment, fused, distance (||beta_jk - gamma_j||)."""
    import pandas as pd

    dist = model.distances()
    return pd.DataFrame([{"creative": c, "segment": model.segments[model.segment_of[k]],
                          "fused": bool(model.fused[k]), "distance": float(dist[k])}
                         for k, c in enumerate(model.creatives)])
