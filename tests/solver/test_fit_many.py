"""fit_many: shared passes across folds and penalties give the same answers as separate fits."""
from __future__ import annotations

import numpy as np

from segmentation.oracle.local import LocalOracle
from segmentation.solver.prox_newton import Problem, fit, fit_many

from solver_testdata import simulate


def test_fit_many_equals_separate_fits_with_fewer_calls():
    st, _, (X, y, cr) = simulate(seed=8, n=600, p=5)
    folds = np.arange(len(y)) % 3
    oracle = LocalOracle.from_arrays(X, y, cr, folds, n_creatives=st.n_creatives, n_folds=3)
    problems = []
    for f in range(3):
        inc = np.arange(3) != f
        problems.append({"lam": 0.02, "alpha": 0.3, "include": inc, "label": f"fold {f}"})
    problems.append(Problem(lam=0.01, alpha=0.0))
    problems.append(Problem(lam=0.05, alpha=0.95))
    problems.append(Problem(lam=0.0, alpha=0.5))

    oracle.passes = 0
    together = fit_many(oracle, st, problems, tol=1e-10)
    calls_together = oracle.passes

    oracle.passes = 0
    separate = []
    for pr in problems:
        d = pr if isinstance(pr, dict) else pr.__dict__
        separate.append(fit(oracle, st, d["lam"], d["alpha"], include=d.get("include"),
                            tol=1e-10))
    calls_separate = oracle.passes

    assert calls_together < calls_separate
    assert calls_together == max(r.n_passes for r in together)
    assert calls_separate == sum(r.n_passes for r in separate)
    for a, b in zip(together, separate):
        assert a.converged and b.converged
        assert np.max(np.abs(a.beta - b.beta)) < 1e-8
        assert np.array_equal(a.fused, b.fused)
        assert abs(a.objective - b.objective) < 1e-12
    # fold fits differ from each other (their training rows differ)
    assert np.max(np.abs(together[0].beta - together[1].beta)) > 1e-3


def test_fit_many_with_warm_starts_along_a_path():
    st, oracle, _ = simulate(seed=9, n=600, p=5)
    lams = [0.08, 0.04, 0.02]
    first = fit_many(oracle, st, [{"lam": lams[0], "alpha": a} for a in (0.2, 0.6)])
    oracle.passes = 0
    nxt = fit_many(oracle, st, [{"lam": lams[1], "alpha": a, "warm_start": r}
                                for a, r in zip((0.2, 0.6), first)])
    assert oracle.passes <= 10 and all(r.converged for r in nxt)
