"""How every fit of a run is solved: one value, passed once, splatted into every ``fit_many``.

The cross-validated path makes fits at several stages (null models, adaptive initial fits, the
lambda steps, the relaxed refits), and each must be solved the same way. Threading ``tol``,
``max_iter``, ``curvature`` and ``lazy_hessian`` through every stage as separate arguments let
one stage miss one (the null fits once ignored ``curvature``); a ``SolverOptions`` cannot be
passed in part. A run's config gives its options (``ModelConfig.solver_options``), used by
``segment fit``'s single fit, the CV and the evaluation's cross-fit.

- ``tol``: the KKT (prox-gradient) residual at which a fit stops (``solver.optimality``);
- ``max_iter``: the Newton-iteration cap (x ``DIAGONAL_ITER_FACTOR`` in diagonal mode);
- ``curvature``: "full", "diagonal" or "auto" (``solver.curvature``);
- ``lazy_hessian``: full-mode fits reuse Hessians between refreshes (``prox_newton.fit_many``);
- ``quasi_newton``: the diagonal-mode metric correction, "anderson" or "spectral".
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import numpy as np

from segmentation.solver.curvature import MODES as CURVATURE_MODES
from segmentation.solver.prox_newton import QUASI_NEWTON

NULL_TOL = 1e-8
"""Null models (lambda = inf) are solved to at most this residual: lambda_max is read from
their gradient, and every grid point depends on it."""


@dataclass(frozen=True)
class SolverOptions:
    tol: float = 1e-6
    max_iter: int = 50
    curvature: str = "auto"
    lazy_hessian: bool = True
    quasi_newton: str = "anderson"

    def __post_init__(self):
        if isinstance(self.tol, bool) or not (isinstance(self.tol, numbers.Real) and self.tol > 0):
            raise ValueError(f"solver tol must be a positive number; got {self.tol!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 1:
            raise ValueError(f"solver max_iter must be a positive integer; got {self.max_iter!r}")
        if self.curvature not in CURVATURE_MODES:
            raise ValueError(f"solver curvature must be one of {CURVATURE_MODES}; got {self.curvature!r}")
        if not isinstance(self.lazy_hessian, (bool, np.bool_)):
            raise ValueError(f"solver lazy_hessian must be true or false; got {self.lazy_hessian!r}")
        if self.quasi_newton not in QUASI_NEWTON:
            raise ValueError(f"solver quasi_newton must be one of {QUASI_NEWTON}; "
                             f"got {self.quasi_newton!r}")

    def fit_kwargs(self) -> dict:
        """The keyword arguments of ``prox_newton.fit_many`` these options set."""
        return dataclasses.asdict(self)

    def for_null(self) -> "SolverOptions":
        """The same options with the tolerance tightened to ``NULL_TOL`` (null models)."""
        return dataclasses.replace(self, tol=min(self.tol, NULL_TOL))
