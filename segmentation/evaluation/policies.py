"""The policies under evaluation and the per-row terms of their estimators (pure numpy).

A policy maps a user's covariates to a distribution over creatives, an (n, K) matrix of
probabilities (rows sum to one). Every learned policy is *cross-fitted*: a row in fold f is
decided by the fold-f model, trained on every fold but f (``FoldModels`` holds one set of small
coefficient arrays per fold, on the fitting scale of the design z(x), intercept first).

Policies (``POLICIES``; the control creative, if any, is never shown by them):

1. ``segment``: segment argmax_j gamma_j . z over the assignable segments, that segment's
   creatives shown uniformly (how a segment campaign is run);
2. ``segment_best``: within that segment, the creative with the highest predicted response;
3. ``personalized``: the creative with the highest predicted response overall (the ceiling);
4. ``per_segment_models``: argmax_j of one unpenalised logistic model per segment pooling its
   creatives (the null model at alpha = 0), the segment's creatives shown uniformly;
5. ``kmeans``: nearest K-means centre on the standardised covariates -> the segment whose
   creatives responded best in that cluster on training rows, shown uniformly;
6. ``best_single``: the creative with the best training response rate, for everyone;
7. ``random``: uniform over the (non-control) creatives: the experiment's own uniform design.

With a control arm, two more: ``control`` (nobody treated) and ``target`` (breakeven targeting:
treat with the assigned segment's creatives when value x predicted uplift > cost, else control).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.special import expit

POLICIES = ("segment", "segment_best", "personalized", "per_segment_models", "kmeans",
            "best_single", "random")
EXTRA_POLICIES = ("control", "target")


@dataclass
class FoldModels:
    """One set of decision arrays per fold f (the model that did NOT see fold f)."""

    beta: np.ndarray                       # (F, K, p) response model (fitting scale)
    gamma: np.ndarray                      # (F, m, p) segment representatives
    segment_of: np.ndarray                 # (K,) segment of each creative
    assignable: np.ndarray                 # (m_a,) segments users may be assigned to
    control: int | None = None             # control creative index
    null_gamma: np.ndarray | None = None   # (F, m, p) per_segment_models
    centers: np.ndarray | None = None      # (F, C, p-1) K-means centres (standardised features)
    cluster_segment: np.ndarray | None = None  # (F, C) segment of each cluster
    best_single: np.ndarray | None = None  # (F,) creative index
    kmeans_affine: tuple | None = None     # (a, b): standardised features = z[:, 1:] * a + b
    value_per_response: float = 1.0
    cost_per_contact: float = 0.0
    creative_costs: np.ndarray | None = None   # (K,) cost of showing each creative: adds cost:P terms

    @property
    def n_folds(self) -> int:
        return self.beta.shape[0]

    @property
    def n_creatives(self) -> int:
        return self.beta.shape[1]

    @property
    def treatments(self) -> np.ndarray:
        """Creatives a policy may show (all but the control)."""
        return np.array([k for k in range(self.n_creatives) if k != self.control], dtype=np.int64)

    @property
    def policies(self) -> list[str]:
        out = ["segment", "segment_best", "personalized"]
        if self.null_gamma is not None:
            out.append("per_segment_models")
        if self.centers is not None:
            out.append("kmeans")
        if self.best_single is not None:
            out.append("best_single")
        out.append("random")
        if self.control is not None:
            out += list(EXTRA_POLICIES)
        return out

    def uniform_over_segment(self) -> np.ndarray:
        """(m, K): row j is the uniform distribution over segment j's creatives."""
        m = self.gamma.shape[1]
        U = np.zeros((m, self.n_creatives))
        for j in range(m):
            ks = np.flatnonzero(self.segment_of == j)
            U[j, ks] = 1.0 / len(ks)
        return U


def _onehot(idx: np.ndarray, K: int) -> np.ndarray:
    out = np.zeros((len(idx), K))
    out[np.arange(len(idx)), idx] = 1.0
    return out


def fold_decisions(z: np.ndarray, f: int, fm: FoldModels) -> dict:
    """Policies and predictions for rows decided by fold model ``f``.

    Returns ``probs`` {policy: (n, K)}, ``q`` (n, K) predicted P(y=1 | x, creative), ``segment``
    (n,) assigned segment, and with a control arm ``uplift`` (n,) predicted uplift of the
    assigned segment over control and ``treat`` (n,) the breakeven targeting decision.
    """
    n, K = z.shape[0], fm.n_creatives
    U = fm.uniform_over_segment()
    treat_k = fm.treatments
    q = expit(z @ fm.beta[f].T)
    assignable = np.asarray(fm.assignable)
    seg = assignable[np.argmax(z @ fm.gamma[f][assignable].T, axis=1)]
    probs: dict[str, np.ndarray] = {"segment": U[seg]}
    # segment_best: best creative within the assigned segment
    in_seg = fm.segment_of[None, :] == seg[:, None]
    probs["segment_best"] = _onehot(np.argmax(np.where(in_seg, q, -np.inf), axis=1), K)
    probs["personalized"] = _onehot(treat_k[np.argmax(q[:, treat_k], axis=1)], K)
    if fm.null_gamma is not None:
        seg0 = assignable[np.argmax(z @ fm.null_gamma[f][assignable].T, axis=1)]
        probs["per_segment_models"] = U[seg0]
    if fm.centers is not None:
        a, b = fm.kmeans_affine
        zs = z[:, 1:] * a + b
        C = fm.centers[f]
        d2 = (zs**2).sum(1)[:, None] - 2.0 * zs @ C.T + (C**2).sum(1)[None, :]
        probs["kmeans"] = U[fm.cluster_segment[f][np.argmin(d2, axis=1)]]
    if fm.best_single is not None:
        probs["best_single"] = _onehot(np.full(n, int(fm.best_single[f])), K)
    rnd = np.zeros((n, K))
    rnd[:, treat_k] = 1.0 / len(treat_k)
    probs["random"] = rnd
    out = {"probs": probs, "q": q, "segment": seg}
    if fm.control is not None:
        c0 = fm.control
        seg_mean = q @ U.T                                   # (n, m) mean over segment creatives
        uplift = seg_mean[np.arange(n), seg] - q[:, c0]
        treat = fm.value_per_response * uplift > fm.cost_per_contact
        ctrl = _onehot(np.full(n, c0), K)
        probs["control"] = ctrl
        probs["target"] = np.where(treat[:, None], U[seg], ctrl)
        out.update(uplift=uplift, treat=treat.astype(float), seg_mean=seg_mean)
    return out


def decisions(z: np.ndarray, fold: np.ndarray, fm: FoldModels) -> dict:
    """``fold_decisions`` for rows of any folds (row i decided by the model of its fold)."""
    z = np.asarray(z, dtype=np.float64)
    fold = np.asarray(fold).astype(np.int64)
    if len(fold) and (fold.min() < 0 or fold.max() >= fm.n_folds):
        raise ValueError(f"fold ids must be in 0..{fm.n_folds - 1}")
    res: dict = {}
    folds = np.unique(fold)
    if len(folds) == 1:
        return fold_decisions(z, int(folds[0]), fm)
    for f in folds:
        rows = np.flatnonzero(fold == f)
        part = fold_decisions(z[rows], int(f), fm)
        if not res:
            res = _empty_like(part, len(fold))
        _scatter(res, part, rows)
    if not res:
        res = _empty_like(fold_decisions(np.zeros((0, z.shape[1])), 0, fm), 0)
    return res


def _empty_like(part: dict, n: int) -> dict:
    out = {}
    for k, v in part.items():
        if isinstance(v, dict):
            out[k] = {kk: np.zeros((n,) + vv.shape[1:], vv.dtype) for kk, vv in v.items()}
        else:
            out[k] = np.zeros((n,) + v.shape[1:], v.dtype)
    return out


def _scatter(dst: dict, part: dict, rows: np.ndarray) -> None:
    for k, v in part.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                dst[k][kk][rows] = vv
        else:
            dst[k][rows] = v


def term_names(fm: FoldModels, extra: Sequence[str] = ()) -> list[str]:
    """Names of the per-row terms ``row_terms`` returns, in column order."""
    names = ["n"]
    for P in [*fm.policies, *extra]:
        names += [f"ipw:{P}", f"w:{P}", f"dr:{P}", f"dm:{P}"]
        if fm.creative_costs is not None:
            names.append(f"cost:{P}")
    if fm.control is not None:
        names += ["upl", "neg", "treat", "negdr"]
        for j in fm.assignable:
            names += [f"mem:{j}", f"drT:{j}", f"drC:{j}", f"upl:{j}", f"neg:{j}"]
    return names


def row_terms(z, y, a, p, fold, fm: FoldModels,
              extra: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, list[str]]:
    """Per-row estimator terms (n, d) and their names (``term_names``).

    ``extra``: more policies decided outside this module, each given as the (n,) creative index
    every row gets (a deterministic policy, e.g. a capacity-constrained allocation of users);
    they get the same four terms. With ``fm.creative_costs`` (c, length K) every policy also
    gets ``cost:P`` = sum_k P(k | x) c_k (its expected cost per exposure).

    For every policy P: ``ipw:P`` = w y, ``w:P`` = w with w = P(a | x) / p (the IPW weight),
    ``dr:P`` = sum_k P(k | x) q_k + w (y - q_a) (doubly robust, q = the cross-fitted response
    model), ``dm:P`` = sum_k P(k | x) q_k (direct method). ``n`` = 1 (one exposure).
    With a control arm: ``upl`` predicted uplift of the assigned segment over control, ``neg``
    = 1{upl < 0} (sleeping dogs), ``treat`` the breakeven decision, ``negdr`` = neg x (DR term
    of segment - DR term of control) (the DR uplift of the predicted sleeping dogs: are they
    really hurt?), and per assignable segment j the member indicator ``mem:j`` and, times it,
    ``drT:j`` (DR term of showing j's creatives uniformly), ``drC:j`` (DR term of control),
    ``upl:j``, ``neg:j``.

    z: (n, p) design on the fitting scale; y: (n,) 0/1; a: (n,) creative shown; p: (n,)
    probability with which it was shown (logged propensity or empirical share); fold: (n,).
    """
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    a = np.asarray(a).astype(np.int64)
    p = np.asarray(p, dtype=np.float64)
    n = len(y)
    dec = decisions(z, fold, fm)
    q = dec["q"]
    idx = np.arange(n)
    q_a = q[idx, a]
    resid = y - q_a
    cols = [np.ones(n)]
    dr_of = {}
    probs = dict(dec["probs"])
    for name, t in (extra or {}).items():
        probs[name] = _onehot(np.asarray(t).astype(np.int64), fm.n_creatives)
    for P in [*fm.policies, *(extra or {})]:
        pi = probs[P]
        w = pi[idx, a] / p
        dm = (pi * q).sum(axis=1)
        dr = dm + w * resid
        dr_of[P] = dr
        cols += [w * y, w, dr, dm]
        if fm.creative_costs is not None:
            cols.append(pi @ np.asarray(fm.creative_costs, dtype=np.float64))
    if fm.control is not None:
        upl = dec["uplift"]
        neg = (upl < 0).astype(float)
        c0 = fm.control
        w_c = (a == c0) / p
        dr_c = q[:, c0] + w_c * resid
        cols += [upl, neg, dec["treat"], neg * (dr_of["segment"] - dr_c)]
        U = fm.uniform_over_segment()
        seg = dec["segment"]
        for j in fm.assignable:
            mem = (seg == j).astype(float)
            pi_j = U[j]
            dr_j = q @ pi_j + pi_j[a] / p * resid
            cols += [mem, mem * dr_j, mem * dr_c, mem * upl, mem * (upl < 0)]
    T = np.column_stack(cols) if n else np.zeros((0, len(cols)))
    return T, term_names(fm, list(extra or {}))


def true_values(z_true: np.ndarray, beta_true: np.ndarray, probs: dict) -> dict:
    """Mean over rows of sum_k P(k | x) sigmoid(beta_true_k . x): each policy's true value on
    these rows (``z_true`` in the scale of ``beta_true``, intercept first)."""
    mu = expit(np.asarray(z_true, float) @ np.asarray(beta_true, float).T)
    return {P: float((pi * mu).sum(axis=1).mean()) for P, pi in probs.items()}
