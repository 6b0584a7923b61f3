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
from functools import partial

import numpy as np

from segmentation.oracle.kernel import (AUC_BINS, BlockSums, auc_from_histogram, block_statistics,
                                       curvature_mode, hessian_models)

RESULT_BYTES_PER_JOB = 256 << 20
"""What one Spark job of a pass may send to the driver, summed over its blocks. Every block
answers for every model, so a pass over many models (the relaxed refits of a CV, the held-out
scores of its blends: hundreds of models with K p x p Hessians or 3,000-bin histograms each)
times many blocks would exceed ``spark.driver.maxResultSize`` (1 GiB by default: a 5-fold CV
at 3M rows in 30 blocks sent 1.1 GiB and failed). Above this the pass's models are split into
chunks, one job each; the answer is the same (models are independent). The Spark oracles
lower it to a quarter of the session's ``spark.driver.maxResultSize`` when that is smaller
(``result_budget_for``)."""



def result_budget_for(spark, default: int = RESULT_BYTES_PER_JOB) -> int:
    """The per-job result budget for a session: ``default``, or a quarter of
    ``spark.driver.maxResultSize`` when that is set lower (a job's answers are unpickled on
    the driver next to the sums; "0" means unlimited). Over a session that does not expose the
    setting (Spark Connect may refuse it), ``default``."""
    try:
        raw = spark.conf.get("spark.driver.maxResultSize", None)
    except Exception:  # noqa: BLE001 - Spark Connect or a locked conf: keep the default
        return int(default)
    return budget_from_max_result_size(raw, default)


def budget_from_max_result_size(raw, default: int = RESULT_BYTES_PER_JOB) -> int:
    """``result_budget_for`` given the setting's text ("1g", "512m", "0"; None: not set)."""
    from segmentation.spark_session import conf_bytes

    size = conf_bytes(raw)
    if size is None or size <= 0:
        return int(default)
    return int(min(default, max(size // 4, 1 << 20)))


def result_bytes_per_model(n_creatives: int, n_features: int, curvature, heldout) -> int:
    """Bytes one block sends back for one model: loss, gradient, largest |eta|, held-out loss,
    plus the Hessians (K p^2), their diagonals (K p) or the held-out histogram (2 x AUC_BINS)."""
    K, p = int(n_creatives), int(n_features)
    n = 2 + K * p + K
    mode = curvature_mode(curvature)
    if mode == "full":
        n += K * p * p
    elif mode == "diagonal":
        n += K * p
    if heldout:
        n += 2 * AUC_BINS
    return 8 * n


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
    result_budget: int = RESULT_BYTES_PER_JOB   # per job of a pass (see RESULT_BYTES_PER_JOB)

    @property
    def n_blocks(self) -> int:
        """Blocks (partitions) that each answer for every model of a pass."""
        return 1

    @abc.abstractmethod
    def _reduce(self, stat, zero, label: str):
        """``zero`` plus ``stat(block)`` of every block of the data, added (``+=``) in block
        order, so the answer does not depend on scheduling (one Spark job on the Spark oracles).
        ``stat``: a picklable function of a ``DesignBlock`` returning what ``zero`` adds
        (``kernel.BlockSums``, or a numpy array of ``zero``'s shape)."""

    def _sums(self, betas: np.ndarray, include: np.ndarray, curvature,
              heldout: bool, label: str) -> BlockSums:
        """Sum ``kernel.block_statistics`` over every block of the data (one pass)."""
        M, K, p = betas.shape
        stat = partial(block_statistics, betas=betas, include=include, curvature=curvature,
                       heldout=heldout)
        return self._reduce(stat, BlockSums.zeros(M, K, p, curvature),
                            label or "segmentation: likelihood pass")

    def block_sum(self, stat, zero, label: str = "") -> np.ndarray:
        """One pass over the design adding ``stat(block)`` of every block to a copy of the
        numpy array ``zero``, in block order: statistics of the cached design other than the
        likelihood's (``policy.assign.design_segment_shares``). Not counted in ``passes``."""
        return self._reduce(stat, np.array(zero, copy=True),
                            label or "segmentation: statistics of the design")

    def evaluate(self, betas, include=None, *, curvature: bool | str = True, heldout: bool = False,
                 label: str = "") -> OracleResult:
        """One pass over the data for M models. ``include`` (M, F) defaults to all folds.

        ``curvature``: True/"full" (Hessians), "diagonal" (their diagonals, ``hess_diag``),
        False/"none", or an (M,) bool array: the Hessians of the models it marks only (the
        other models' ``hess`` are nan; ``kernel.hessian_models``). ``heldout``: True adds
        held-out loss and AUC; "only" computes just those (``loss``, ``grad`` and
        ``max_abs_eta`` are then nan: no training-row work at all)."""
        only = isinstance(heldout, str)
        if only and heldout != "only":
            raise ValueError(f"heldout must be True, False or 'only'; got {heldout!r}")
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
        want = None
        if isinstance(curvature, (np.ndarray, list, tuple)):
            want = hessian_models(np.asarray(curvature, dtype=bool), M)
            # all or none marked: the plain modes (no per-model flags shipped to the tasks)
            curvature = want if 0 < want.sum() < M else bool(want.all())
        elif not isinstance(curvature, (bool, np.bool_)):
            curvature = curvature_mode(curvature)
        if only and curvature_mode(curvature) != "none":
            raise ValueError("heldout='only' computes no curvature: pass curvature=False")
        s = self._chunked_sums(betas, include, curvature, heldout, label)
        self.passes += 1
        scale = 1.0 / n_train
        if only:
            s.loss[:] = np.nan
            s.grad[:] = np.nan
            s.max_abs_eta = np.full_like(np.asarray(s.max_abs_eta, dtype=float), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            held = np.where(n_test > 0, s.heldout_loss / n_test, np.nan)
        hess = None if s.hess is None else s.hess * scale[:, None, None, None]
        if hess is not None and want is not None:
            hess[~want] = np.nan                   # not computed: never to be read as zero
        return OracleResult(
            loss=s.loss * scale,
            grad=s.grad * scale[:, None, None],
            hess=hess,
            max_abs_eta=s.max_abs_eta,
            heldout_loss=held,
            heldout_auc=None if s.heldout_hist is None else np.array(
                [auc_from_histogram(h) for h in s.heldout_hist]),
            hess_diag=None if s.hess_diag is None else s.hess_diag * scale[:, None, None],
            heldout_hist=s.heldout_hist,
        )

    def model_chunks(self, M: int, curvature, heldout) -> list[slice]:
        """The models of a pass in chunks whose answers, over all blocks, fit ``result_budget``."""
        per_model = self.n_blocks * result_bytes_per_model(self.n_creatives, self.n_features,
                                                           curvature, heldout)
        size = max(1, int(self.result_budget // per_model))
        return [slice(a, min(M, a + size)) for a in range(0, M, size)]

    def _chunked_sums(self, betas, include, curvature, heldout, label) -> BlockSums:
        """``_sums`` over ``model_chunks``: one job per chunk, answers stacked in model order."""
        chunks = self.model_chunks(betas.shape[0], curvature, heldout)
        if len(chunks) == 1:
            return self._sums(betas, include, curvature, heldout, label)
        M = betas.shape[0]
        parts = [self._sums(betas[c], include[c],
                            curvature[c] if isinstance(curvature, np.ndarray) else curvature, heldout,
                            f"{label or 'likelihood pass'} (models {c.start + 1}-{c.stop} of {M})")
                 for c in chunks]

        def stack(name):
            vals = [getattr(q, name) for q in parts]
            return None if any(v is None for v in vals) else np.concatenate(vals, axis=0)

        return BlockSums(loss=stack("loss"), grad=stack("grad"), hess=stack("hess"),
                         max_abs_eta=stack("max_abs_eta"), heldout_loss=stack("heldout_loss"),
                         heldout_hist=stack("heldout_hist"), hess_diag=stack("hess_diag"))

    def n_rows(self, include=None) -> float:
        include = np.ones(self.n_folds, dtype=bool) if include is None else np.asarray(include, bool)
        return float(self.counts[include].sum())
