"""Known-truth helpers for validating the evaluation: a control arm added to a simulated
campaign, and the true coefficients on a model's fitting scale.

``simulate_campaign`` has no control arm; ``add_control_arm`` adds one to an in-memory
``SimulatedCampaign`` (``simulate_arrays``) without touching the simulator: every user is moved
to the control creative with probability 1/(K+1) (so with one exposure per user the design stays
uniform over K+1 creatives) and their response is redrawn from the control's own logistic model
(``control_rate`` at the mean covariates, with slope ``control_slope`` per sd on ``x1``). The
truth dict gains ``beta[control]`` and ``control``.
"""
from __future__ import annotations

import copy
import math

import numpy as np
from scipy.special import expit

from segmentation.data.simulate import design_from_truth


def add_control_arm(campaign, *, control: str = "ctrl", control_rate: float = 0.10,
                    control_slope: float = 0.6, seed: int = 0):
    """A copy of ``campaign`` (SimulatedCampaign, one exposure per user) with a control arm."""
    ex = campaign.exposures.copy()
    truth = copy.deepcopy(campaign.truth)
    names = truth["feature_names"]
    mu = np.asarray(truth["covariate_mean"])
    sd = np.asarray(truth["covariate_sd"])
    K = len(truth["creatives"])
    b = np.zeros(len(names))
    b0 = math.log(control_rate / (1 - control_rate))
    i1 = names.index("x1")
    b[i1] = control_slope / sd[0]
    b[0] = b0 - control_slope * mu[0] / sd[0]
    rng = np.random.default_rng([seed, 7331])
    users = ex["user_id"].unique()
    moved = set(users[rng.random(len(users)) < 1.0 / (K + 1)])
    rows = ex["user_id"].isin(moved).to_numpy()
    X = design_from_truth(truth, ex[rows])
    y = (rng.random(int(rows.sum())) < expit(X @ b)).astype(np.int64)
    ex.loc[rows, "creative"] = control
    ex.loc[rows, "response"] = y
    truth["beta"][control] = b.tolist()
    truth["control"] = control
    out = copy.copy(campaign)
    out.exposures = ex
    out.truth = truth
    return out




def true_beta_fit(truth: dict, encoding, creatives) -> np.ndarray:
    """(K, p) true coefficients of ``creatives`` on ``encoding``'s fitting scale."""
    if list(truth["feature_names"]) != list(encoding.feature_names):
        raise ValueError(f"truth features {truth['feature_names']} differ from the encoding's "
                         f"{encoding.feature_names}")
    B = np.array([truth["beta"][c] for c in creatives], dtype=float)
    return encoding.from_original_scale(B)
