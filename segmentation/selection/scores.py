"""Held-out scores of a candidate model over the F cross-validation folds.

``heldout_deviance[f]`` is the mean held-out log loss of the model fitted without fold f on
fold f; its mean over folds is the CV estimate, and sd / sqrt(F) the usual standard error
(nan when a fold is missing or F < 2).
"""
from __future__ import annotations

import math

import numpy as np


def standard_error(x) -> float:
    """sd(x, ddof=1) / sqrt(len(x)); nan for fewer than 2 values or a non-finite one."""
    x = np.asarray(x, dtype=float)
    if x.size < 2 or not np.all(np.isfinite(x)):
        return math.nan
    return float(np.std(x, ddof=1) / math.sqrt(x.size))


def finite_mean(x) -> float:
    """Mean of x, or nan if x is empty or holds a non-finite value."""
    x = np.asarray(x, dtype=float)
    return float(np.mean(x)) if x.size and np.all(np.isfinite(x)) else math.nan


class HeldoutScores:
    """Mixin for anything with per-fold ``heldout_deviance`` and ``heldout_auc`` arrays."""

    heldout_deviance: np.ndarray
    heldout_auc: np.ndarray

    @property
    def mean_deviance(self) -> float:
        return finite_mean(self.heldout_deviance)

    @property
    def se_deviance(self) -> float:
        return standard_error(self.heldout_deviance)

    @property
    def mean_auc(self) -> float:
        return finite_mean(self.heldout_auc)

    @property
    def se_auc(self) -> float:
        return standard_error(self.heldout_auc)
