"""Which curvature the solver asks the oracle for: full per-creative Hessians or their diagonals.

- ``"full"``: each pass returns H_c = (1/N) X_c' W X_c (K p^2 doubles per block result, O(n p^2)
  flops) and the driver eigendecomposes every H_c (O(K p^3)) per iteration: proximal Newton,
  3-7 passes per fit (``prox_newton.py``).
- ``"diagonal"``: each pass returns only diag(H_c) (K p doubles, O(n p) extra flops) and the
  model uses the metric diag(H_c) (``subproblem.DiagonalQuadraticModel``), its steps
  Anderson-accelerated (default) or the metric rescaled per creative by a spectral
  (Barzilai-Borwein) factor (``prox_newton.ProxNewton``, ``quasi_newton``): a proximal
  quasi-Newton (variable-metric) method with the same exact prox-based zeros and fusion, the
  same line search and the same KKT-residual stopping rule, converging linearly (more passes,
  each much cheaper at large p).
- ``"auto"``: "full" when p <= ``AUTO_MAX_P``, else "diagonal". The threshold is measured
  (``benchmarks/bench_large_p.py``, ``benchmarks/LARGE_P.md``).
"""
from __future__ import annotations

AUTO_MAX_P = 500
MODES = ("full", "diagonal", "auto")


def resolve_curvature(curvature: str, n_features: int, threshold: int | None = None) -> str:
    """"full" or "diagonal" for a problem with ``n_features`` coefficients per creative
    (intercept included)."""
    if curvature is True:
        curvature = "full"
    if curvature not in MODES:
        raise ValueError(f"curvature must be one of {MODES}; got {curvature!r}")
    if curvature != "auto":
        return curvature
    limit = AUTO_MAX_P if threshold is None else int(threshold)
    return "full" if int(n_features) <= limit else "diagonal"
