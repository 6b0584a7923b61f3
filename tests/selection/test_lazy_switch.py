"""``lazy_hessian`` reaches every fit of a cross-validated path: eager curvature (a fresh
Hessian at every pass) and lazy curvature give the same grid points and the same choice, and
the eager path computes more Hessians."""
from __future__ import annotations

import numpy as np
import pytest

from segmentation.selection.cv import cross_validate

from cv_testdata import planted

KW = dict(n_lambda=5, lambda_min_ratio=0.02, rule="1se", relax=(0.0, 0.5, 1.0), progress=None,
          tol=1e-9)


def _hessians(res) -> int:
    fits = [f for p in res.points.values() for f in [p.full, *p.folds]]
    fits += [f for refits in res.relax.refits.values() for f in refits]
    return sum(f.n_hessians for f in fits)


@pytest.fixture(scope="module")
def paths():
    st, oracle, _, _ = planted(6_000, seed=3, n_folds=3, n_blocks=2)
    return {lazy: cross_validate(oracle, st, [0.1, 0.3], lazy_hessian=lazy, **KW)
            for lazy in (False, True)}


def test_lazy_and_eager_paths_agree(paths):
    eager, lazy = paths[False], paths[True]
    assert sorted(eager.points) == sorted(lazy.points)
    for key, pe in eager.points.items():
        pl = lazy.points[key]
        for a, b in zip([pe.full, *pe.folds], [pl.full, *pl.folds]):
            assert a.converged and b.converged
            assert abs(a.objective - b.objective) <= 1e-8 * abs(a.objective)
            np.testing.assert_array_equal(a.fused, b.fused)
            np.testing.assert_array_equal(a.gamma == 0.0, b.gamma == 0.0)
    assert (eager.chosen, eager.chosen_relax) == (lazy.chosen, lazy.chosen_relax)


def test_eager_path_computes_a_hessian_at_every_pass_of_every_fit(paths):
    eager, lazy = paths[False], paths[True]
    fits = [f for p in eager.points.values() for f in [p.full, *p.folds]]
    assert all(f.hess is None for f in fits)            # nothing carried without lazy curvature
    assert _hessians(eager) > _hessians(lazy)
