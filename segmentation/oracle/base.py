"""The oracle interface the solvers talk to.

An oracle answers, for M coefficient matrices beta^m (K x p) at once, the *mean* negative
log-likelihood over each model's training rows,

    L_m(beta^m) = (1 / N_m) * sum_{i : include[m, fold_i]} [ log(1 + exp(eta_i)) - y_i eta_i ],

its gradient with respect to each beta^m_c, and optionally the per-creative curvature
(1 / N_m) * X_c' W X_c (``curvature=True`` or "full"), or only its diagonal
(``curvature="diagonal"``: O(M K p), for thousands of covariates). Nothing about rows leaves
the oracle: answers are O(M K p^2) with full curvature, O(M K p) otherwise.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from segmentation.oracle.kernel import BlockSums, auc_from_histogram, curvature_mode


@dataclass
class OracleResult:
    loss: np.ndarray                 # (M,) mean negative log-likelihood over training rows
    grad: np.ndarray                 # (M, K, p)
    hess: np.ndarray | None          # (M, K, p, p) or None
    max_abs_eta: np.ndarray          # (M, K) largest |linear predictor| on training rows
    heldout_loss: np.ndarray         # (M,) mean loss on held-out rows (nan when none)
    heldout_auc: np.ndarray | None = None  # (M,) AUC of the held-out predictions (binned)
    hess_diag: np.ndarray | None = None    # (M, K, p) Hessian diagonals (curvature="diagonal")
    heldout_hist: np.ndarray | None = None  # (M, AUC_BINS, 2) held-out rows by eta bin and y

    def model(self, m: int) -> "OracleResult":
        """The answer for one model, keeping the leading axis of length 1."""
        return OracleResult(
            self.loss[m:m + 1], self.grad[m:m + 1],
            None if self.hess is None else self.hess[m:m + 1],
            self.max_abs_eta[m:m + 1], self.heldout_loss[m:m + 1],
            None if self.heldout_auc is None else self.heldout_auc[m:m + 1],
            None if self.hess_diag is None else self.hess_diag[m:m + 1],
            None if self.heldout_hist is None else self.heldout_hist[m:m + 1],
        )


class Oracle(abc.ABC):
    """Loss / gradient / curvature over a fixed data set split into F folds."""

    n_features: int                  # p, including the intercept column
    n_creatives: int                 # K
    n_folds: int                     # F (1 when there is no cross-validation)
    counts: np.ndarray               # (F, K) training rows per fold and creative
    positives: np.ndarray            # (F, K) positive responses per fold and creative
    passes: int = 0                  # data passes made so far

    @abc.abstractmethod
    def _sums(self, betas: np.ndarray, include: np.ndarray, curvature,
              heldout: bool, label: str) -> BlockSums:
        """Sum ``kernel.block_statistics`` over every block of the data (one pass)."""

    def evaluate(self, betas, include=None, *, curvature: bool | str = True, heldout: bool = False,
                 label: str = "") -> OracleResult:
        """One pass over the data for M models. ``include`` (M, F) defaults to all folds.

        ``curvature``: True/"full" (Hessians), "diagonal" (their diagonals, ``hess_diag``),
        False/"none". ``heldout``: True adds held-out loss and AUC; "only" computes just those
        (``loss``, ``grad`` and ``max_abs_eta`` are then nan: no training-row work at all)."""
        only = isinstance(heldout, str)
        if only and heldout != "only":
            raise ValueError(f"heldout must be True, False or 'only'; got {heldout!r}")
        if only and curvature not in (False, "none"):
            raise ValueError("heldout='only' computes no curvature: pass curvature=False")
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim == 2:
            betas = betas[None]
        M = betas.shape[0]
        if betas.shape[1:] != (self.n_creatives, self.n_features):
            raise ValueError(f"coefficients must be (M, {self.n_creatives}, {self.n_features}); "
                             f"got {betas.shape}")
        include = np.ones((M, self.n_folds), dtype=bool) if include is None else np.asarray(include, bool)
        n_train = include.astype(float) @ self.counts.sum(axis=1)
        n_test = (~include).astype(float) @ self.counts.sum(axis=1)
        if np.any(n_train == 0):
            raise ValueError("a model has no training rows")
        curvature = curvature if isinstance(curvature, (bool, np.bool_)) else curvature_mode(curvature)
        s = self._sums(betas, include, curvature, heldout, label)
        self.passes += 1
        scale = 1.0 / n_train
        if only:
            s.loss[:] = np.nan
            s.grad[:] = np.nan
            s.max_abs_eta = np.full_like(np.asarray(s.max_abs_eta, dtype=float), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            held = np.where(n_test > 0, s.heldout_loss / n_test, np.nan)
        return OracleResult(
            loss=s.loss * scale,
            grad=s.grad * scale[:, None, None],
            hess=None if s.hess is None else s.hess * scale[:, None, None, None],
            max_abs_eta=s.max_abs_eta,
            heldout_loss=held,
            heldout_auc=None if s.heldout_hist is None else np.array(
                [auc_from_histogram(h) for h in s.heldout_hist]),
            hess_diag=None if s.hess_diag is None else s.hess_diag * scale[:, None, None],
            heldout_hist=s.heldout_hist,
        )

    def n_rows(self, include=None) -> float:
        include = np.ones(self.n_folds, dtype=bool) if include is None else np.asarray(include, bool)
        return float(self.counts[include].sum())
