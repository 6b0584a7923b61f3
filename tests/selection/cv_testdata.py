"""Planted-truth campaigns as in-memory oracles for the selection tests."""
from __future__ import annotations

import numpy as np

from segmentation.data.simulate import simulate_arrays
from segmentation.oracle.local import LocalOracle
from segmentation.solver.structure import SegmentStructure


def design(frame, truth, levels):
    """Standardised numeric covariates + region indicators (truth's reference), no intercept."""
    num = truth["numeric"]
    X = np.column_stack([(frame[c].to_numpy(float) - m) / s
                         for c, m, s in zip(num, truth["covariate_mean"], truth["covariate_sd"])])
    reg = frame["region"].to_numpy(object)
    return np.column_stack([X] + [(reg == lv).astype(float) for lv in levels])


def planted(n_users=20_000, seed=0, n_folds=3, n_blocks=2, **kw):
    camp = simulate_arrays(n_users, seed, **kw)
    truth = camp.truth
    st = SegmentStructure.from_mapping(camp.segments)
    levels = [n.split("=", 1)[1] for n in truth["feature_names"] if n.startswith("region=")]
    ex = camp.exposures
    X = design(ex, truth, levels)
    creative = np.array([st.creatives.index(c) for c in ex["creative"]])
    users = ex["user_id"].to_numpy(object)
    fold = np.array([int(u[1:]) for u in users]) * 2654435761 % 2**32 % n_folds
    oracle = LocalOracle.from_arrays(X, ex["response"].to_numpy(float), creative, fold,
                                     n_creatives=st.n_creatives, n_folds=n_folds, n_blocks=n_blocks)
    return st, oracle, camp, levels
