"""Cross-fitted fold models: for every fold f, the segmentation model at the fitted model's
(lambda, alpha) and the per-segment null model (alpha = 0: one unpenalised logistic model per
segment pooling its creatives, the ``per_segment_models`` baseline), both trained on every fold
but f.

All 2F problems share oracle passes (``fit_many``); the segmentation fits start from the full
model (close to every fold's solution, so a few Newton iterations each), the null fits from
pooled log-odds. The pass count is the largest of the problems', not their sum.

A relaxed model (``model.relax`` = g < 1, ``selection/relax.py``) is cross-fitted the way it
was made: each fold's penalised fit is refitted on its own pattern at the model's light
penalty, and the fold model is the blend g * penalised + (1 - g) * refit (F more problems,
sharing their passes).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from segmentation.errors import DataValidationError, SeparationError
from segmentation.selection.relax import blend, relax_problems
from segmentation.solver.options import SolverOptions
from segmentation.solver.prox_newton import Problem, fit_many

log = logging.getLogger(__name__)


@dataclass
class CrossFit:
    beta: np.ndarray            # (F, K, p) fitting scale of the prepared encoding
    gamma: np.ndarray           # (F, m, p)
    null_gamma: np.ndarray | None   # (F, m, p); None when that baseline had to be skipped
    info: list[dict]            # per problem: label, converged, iterations, passes, residual
    passes: int
    seconds: float
    skipped: str | None = None  # why per_segment_models was skipped


def warm_start_from(model, encoding) -> tuple[np.ndarray, np.ndarray]:
    """(gamma, delta) of the full model's penalised fit on ``encoding``'s fitting scale."""
    model = model.with_fit("penalized")
    if model.encoding == encoding.to_dict():
        gamma, beta = np.asarray(model.gamma_fit), np.asarray(model.beta_fit)
    else:
        gamma = encoding.from_original_scale(model.gamma)
        beta = encoding.from_original_scale(model.beta)
    delta = beta - gamma[np.asarray(model.segment_of)]
    fused = np.asarray(model.fused, dtype=bool)
    delta[fused] = 0.0
    return gamma, delta


def check_compatible(model, prepared) -> None:
    """The prepared data must have the model's creatives, segments and features, in order."""
    st, enc = prepared.structure, prepared.encoding
    if list(st.creatives) != list(model.creatives) or list(st.segments) != list(model.segments):
        raise DataValidationError(
            f"the data/config define creatives {list(st.creatives)} in segments {list(st.segments)}, "
            f"but the model has creatives {list(model.creatives)} in segments {list(model.segments)}")
    if list(enc.feature_names) != list(model.features):
        missing = [f for f in model.features if f not in enc.feature_names]
        extra = [f for f in enc.feature_names if f not in model.features]
        raise DataValidationError(
            f"the data's encoded features differ from the model's: missing {missing}, "
            f"unexpected {extra} (check data.covariates / data.categorical and the data's levels)")


def crossfit(prepared, model, *, options: SolverOptions | None = None) -> CrossFit:
    """Fit the 2F cross-fitting problems on ``prepared.oracle`` (which must have F >= 2 folds);
    ``options``: the run's ``SolverOptions`` (``cfg.model.solver_options()``; default: the
    defaults)."""
    opts = options if options is not None else SolverOptions()
    F = prepared.n_folds
    if F < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds; the prepared data has {F}")
    check_compatible(model, prepared)
    st = prepared.structure
    warm = warm_start_from(model, prepared.encoding)
    problems = []
    for f in range(F):
        inc = np.arange(F) != f
        problems.append(Problem(model.lam, model.alpha, include=inc, warm_start=warm,
                                label=f"crossfit fold {f}"))
    for f in range(F):
        inc = np.arange(F) != f
        problems.append(Problem(np.inf, 0.0, include=inc, label=f"per-segment models fold {f}"))
    def solve(probs, label):
        return fit_many(prepared.oracle, st, probs, label=label, **opts.fit_kwargs())

    t0 = time.time()
    before = prepared.oracle.passes
    skipped = None
    try:
        res = solve(problems, "evaluation crossfit")
    except SeparationError as e:
        # the unpenalised per-segment models can be separable where the penalised model is not:
        # drop that baseline (reported), keep the evaluation
        skipped = f"per_segment_models skipped: its unpenalised fit diverges ({e})"
        log.warning(skipped)
        problems = problems[:F]
        res = solve(problems, "evaluation crossfit")
    fold_models = list(res[:F])
    if model.relax < 1.0:
        light = float(model.fit["relaxed"]["light_lambda"])
        rel_probs = relax_problems(fold_models, [np.arange(F) != f for f in range(F)], model.alpha,
                                   light, [f"crossfit fold {f} relaxed refit" for f in range(F)])
        refits = solve(rel_probs, "evaluation crossfit: relaxed refits")
        problems, res = [*problems, *rel_probs], [*res, *refits]
        fold_models = [blend(p_, r_, model.relax, st) for p_, r_ in zip(fold_models, refits)]
    seconds = time.time() - t0
    passes = prepared.oracle.passes - before
    info = [{"label": pr.label, "converged": bool(r.converged), "iterations": int(r.n_iter),
             "passes": int(r.n_passes), "residual": float(r.residual)} for pr, r in zip(problems, res)]
    log.info("cross-fitted %d fold models in %d shared passes (%.1fs)", len(problems), passes, seconds)
    return CrossFit(
        beta=np.stack([r.beta for r in fold_models]),
        gamma=np.stack([r.gamma for r in fold_models]),
        null_gamma=np.stack([r.gamma for r in res[F:2 * F]]) if skipped is None else None,
        info=info, passes=int(passes), seconds=float(seconds), skipped=skipped,
    )
