"""Joint path / cross-validation on planted truth (numpy oracle): selection, the table, the fold
fits, the held-out metrics that come free with the next step, separation handling."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import segmentation.selection.cv as cvmod
from segmentation.errors import SeparationError
from segmentation.selection.cv import PathPoint, cross_validate, select
from segmentation.selection.relax import blend
from segmentation.solver.penalty import PenaltyWeights
from segmentation.solver.prox_newton import FitResult, fit

from cv_testdata import design

ALPHAS = [0.0, 0.1, 0.2]


@pytest.fixture(scope="module")
def cv20k(camp20k):
    st, oracle, _, _ = camp20k
    lines = []
    res = cross_validate(oracle, st, ALPHAS, n_lambda=8, lambda_min_ratio=0.01, rule="1se",
                         progress=lines.append)
    return res, lines


def _ari(res_fit, camp, levels, st):
    from sklearn.metrics import adjusted_rand_score

    U = camp.users
    Z = np.column_stack([np.ones(len(U)), design(U, camp.truth, levels)])
    seg = np.argmax(Z @ res_fit.gamma.T, axis=1)
    true = np.array([st.segments.index(s) for s in U["true_segment"]])
    return adjusted_rand_score(true, seg)


def test_planted_truth_1se_recovers_fusion_pattern(camp20k, cv20k):
    """Paired 1se with relaxed refits at 20k users, 3 folds: exactly the deviant creative is
    unfused, and the relaxed model's segments beat the penalised fit's at the same point
    (ARI 0.82 against 0.53 here; the old unpaired rule without relaxation gave 0.73-0.75)."""
    st, _, camp, levels = camp20k
    res, _ = cv20k
    final = res.final_fit
    unfused = [st.creatives[c] for c in np.flatnonzero(~final.fused)]
    assert unfused == camp.truth["deviant_creatives"] == ["cr03"]
    assert res.chosen_relax < 1.0
    assert _ari(final, camp, levels, st) >= 0.78
    assert _ari(final, camp, levels, st) > _ari(res.penalised_fit, camp, levels, st)


def test_planted_truth_min_rule_segments(camp20k, cv20k):
    """min picks a smaller lambda: better segments (ARI 0.82-0.86 at 20k, 0.96 at 200k), the
    deviant unfused, but some faithful creatives unfused too."""
    st, _, camp, levels = camp20k
    res, _ = cv20k
    key = select(res.points, "min")
    fit_min = res.points[key].full
    assert not fit_min.fused[st.creatives.index("cr03")]
    assert _ari(fit_min, camp, levels, st) >= 0.8
    assert res.points[key].lam <= res.chosen_lambda


def test_table_and_console(camp20k, cv20k):
    st, _, _, _ = camp20k
    res, lines = cv20k
    t_all = res.table(st)
    assert len(t_all) == len(ALPHAS) * 8 * 5 and int(t_all["chosen"].sum()) == 1
    t = t_all[t_all["relax"] == 1.0].reset_index(drop=True)     # the penalised grid points
    for col in ["alpha", "lambda", "deviance_fold0", "deviance_fold2", "auc_fold1", "mean_deviance",
                "se_deviance", "mean_auc", "fused", "gamma_nonzero", "iterations", "passes", "residual"]:
        assert col in t.columns
    assert t[[f"deviance_fold{f}" for f in range(3)]].notna().all().all()
    assert ((t["mean_auc"] > 0.5) & (t["mean_auc"] < 1)).all()
    # same grid for every fold; grids start at lambda_max and are log-spaced
    for a, g in enumerate(res.grids):
        assert g[0] == res.lambda_max[a] and np.isclose(g[-1], 0.01 * g[0])
    # the first point of every path is the null model: all fused
    assert (t.loc[t["lambda_index"] == 0, "fused"] == 10).all()
    assert len(lines) == 9 and all(line.startswith("[cv] lambda ") for line in lines[:8])
    assert lines[8].startswith("[cv] relaxed refits: ")
    row = t_all[t_all["chosen"]].iloc[0]
    assert row["lambda"] == res.chosen_lambda and row["alpha"] == res.chosen_alpha
    assert row["relax"] == res.chosen_relax
    # paired difference to the best candidate: zero there, and the chosen one within 1 SE
    best = t_all.loc[t_all["mean_deviance"].idxmin()]
    assert best["paired_diff"] == 0 and best["paired_se"] == 0
    assert row["paired_diff"] <= row["paired_se"]
    dev = t_all[[f"deviance_fold{f}" for f in range(3)]].to_numpy()
    d = dev - dev[t_all.index.get_loc(best.name)]
    np.testing.assert_allclose(t_all["paired_diff"], d.mean(axis=1), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(t_all["paired_se"], d.std(axis=1, ddof=1) / np.sqrt(3), rtol=1e-12, atol=1e-15)


def test_heldout_metrics_come_free_and_are_right(camp20k, cv20k):
    st, oracle, _, _ = camp20k
    res, _ = cv20k
    assert res.heldout_extra_passes == 1           # only the last lambda needs its own pass
    for key in [(0, 0), res.chosen, (2, 7)]:
        pt = res.points[key]
        for f in range(3):
            inc = np.ones(3, bool)
            inc[f] = False
            r = oracle.evaluate(pt.folds[f].beta[None], inc[None], curvature=False, heldout=True)
            assert pt.heldout_deviance[f] == pytest.approx(r.heldout_loss[0], rel=1e-12)
            assert pt.heldout_auc[f] == pytest.approx(r.heldout_auc[0], rel=1e-12)


def test_fold_fits_and_final_fit_solve_their_problems(camp20k, cv20k):
    st, oracle, _, _ = camp20k
    res, _ = cv20k
    lam, alpha, g = res.chosen_lambda, res.chosen_alpha, res.chosen_relax
    light = res.relax.light[res.chosen[0]]

    def direct(include):
        """The chosen procedure from scratch: penalised fit, relaxed refit on its pattern, blend."""
        pen = fit(oracle, st, lam, alpha, include=include, tol=1e-8)
        rel = fit(oracle, st, light, alpha, include=include, tol=1e-8, warm_start=pen,
                  weights=PenaltyWeights.pattern(pen.gamma, pen.delta))
        return pen, rel, blend(pen, rel, g, st)

    # the path's fits solve their problems to the CV's tolerance (1e-6 KKT residual): objectives
    # agree to ~1e-9; coefficients only to ~1e-4 along the nearly flat directions
    pen, rel, cold = direct(None)
    assert res.penalised_fit.objective == pytest.approx(pen.objective, abs=1e-8)
    assert res.relax.refits[res.chosen][-1].objective == pytest.approx(rel.objective, abs=1e-8)
    np.testing.assert_array_equal(res.final_fit.fused, cold.fused)
    np.testing.assert_allclose(res.final_fit.beta, cold.beta, atol=5e-4)
    assert len(res.fold_fits) == 3
    for f, ff in enumerate(res.fold_fits):
        inc = np.ones(3, bool)
        inc[f] = False
        pen_f, rel_f, direct_f = direct(inc)
        assert ff.beta.shape == (st.n_creatives, oracle.n_features)
        assert res.chosen_point.folds[f].objective == pytest.approx(pen_f.objective, abs=1e-8)
        assert res.relax.refits[res.chosen][f].objective == pytest.approx(rel_f.objective, abs=1e-8)
        np.testing.assert_array_equal(ff.fused, direct_f.fused)
        np.testing.assert_allclose(ff.beta, direct_f.beta, atol=5e-4)


def test_passes_close_to_a_full_data_path(camp20k, cv20k):
    st, oracle, _, _ = camp20k
    res, _ = cv20k
    base = cross_validate(oracle, st, ALPHAS, n_lambda=8, folds=False, progress=None)
    assert base.chosen is None and base.n_folds == 0
    assert res.passes <= 1.5 * base.passes
    for key, pt in base.points.items():            # the full-data path is the same path
        assert pt.full.objective == pytest.approx(res.points[key].full.objective, abs=1e-9)


def _pt(a, k, lam, devs):
    fr = FitResult(*([None] * 14))
    return PathPoint(a, k, 0.1 * a, lam, fr, None, np.asarray(devs, float), np.full(len(devs), 0.7))


def test_select_rules():
    pts = {
        (0, 0): _pt(0, 0, 1.0, [0.50, 0.52, 0.54]),   # mean .52
        (0, 1): _pt(0, 1, 0.5, [0.40, 0.42, 0.44]),   # mean .42, se .01155
        (0, 2): _pt(0, 2, 0.25, [0.39, 0.41, 0.43]),  # mean .41 (min), se .01155
        (1, 0): _pt(1, 0, 0.8, [0.45, 0.47, 0.49]),   # mean .47: outside 1 se
        (1, 1): _pt(1, 1, 0.3, [np.nan, 0.1, 0.1]),   # not finite: ignored
    }
    assert select(pts, "min") == (0, 2)
    assert select(pts, "1se_unpaired") == (0, 1)    # largest lambda with mean <= .41 + .0115
    # paired: (0, 1) is worse than the minimum by exactly .01 on every fold (SE of the
    # difference 0), so it is 'infinitely many' paired SEs worse; nothing else is within
    assert select(pts, "1se") == (0, 2)
    with pytest.raises(ValueError):
        select(pts, "max")
    assert select({}, "min") is None


def test_paired_1se_cancels_fold_difficulty():
    """The issue's case: fold difficulty (spread .05 across folds, same for every lambda) swamps
    a consistent cost of fusing (+.0007 on every fold, +-.00003): the unpaired rule takes the
    fused point, the paired one does not; a point whose difference is noise (+-.002 around
    +.0005) is within one paired SE and is taken for its larger lambda."""
    hard = np.array([0.60, 0.65, 0.70, 0.55, 0.62])
    pts = {
        (0, 0): _pt(0, 0, 1.0, hard + 0.0007 + np.array([3, -3, 2, -2, 0]) * 1e-5),   # fused
        (0, 1): _pt(0, 1, 0.5, hard),                                                # min
        (1, 0): _pt(1, 0, 0.7, hard + 0.0005 + np.array([2, -2, 1, -1, 0]) * 1e-3),  # noise
    }
    assert select(pts, "min") == (0, 1)
    assert select(pts, "1se_unpaired") == (0, 0)
    assert select(pts, "1se") == (1, 0)
    diff, se = cvmod.paired_delta(pts[(0, 0)], pts[(0, 1)])
    assert diff == pytest.approx(0.0007) and se == pytest.approx(np.std([3, -3, 2, -2, 0], ddof=1) * 1e-5 / 5 ** 0.5)
    assert cvmod.paired_delta(pts[(0, 1)], pts[(0, 1)]) == (0.0, 0.0)


def test_separation_stops_one_alpha_path(camp20k, monkeypatch):
    st, oracle, _, _ = camp20k
    real = cvmod.fit_many
    calls = []

    def flaky(orc, structure, problems, **kw):
        calls.append(sorted({p.alpha for p in problems}))
        if any(p.alpha == 0.1 and p.lam < 0.05 for p in problems):
            raise SeparationError("planted: creative cr05 diverges")
        return real(orc, structure, problems, **kw)

    monkeypatch.setattr(cvmod, "fit_many", flaky)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = cross_validate(oracle, st, ALPHAS, n_lambda=6, progress=None, relax=None)
    assert 1 in res.stopped and "stopped at lambda index" in res.stopped[1]
    assert any("stopped" in str(w.message) for w in caught)
    t = res.table(st)
    a1 = t[t["alpha_index"] == 1]
    assert a1["lambda"].min() >= 0.05 and len(a1) < 6
    assert a1.iloc[-1]["warning"].startswith("path of alpha=0.1 stopped")
    assert len(t[t["alpha_index"] == 0]) == 6 and len(t[t["alpha_index"] == 2]) == 6
    assert t[["mean_deviance"]].notna().all().all()   # held-out metrics for every point reached
    assert res.chosen is not None


def test_separation_everywhere_raises(camp20k, monkeypatch):
    st, oracle, _, _ = camp20k

    def broken(orc, structure, problems, **kw):
        if all(math.isfinite(p.lam) for p in problems):
            raise SeparationError("planted: everything diverges")
        return cvmod.fit_many.__wrapped__(orc, structure, problems, **kw)

    import segmentation.solver.prox_newton as pn
    broken.__wrapped__ = pn.fit_many
    monkeypatch.setattr(cvmod, "fit_many", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SeparationError, match="no lambda"):
            cross_validate(oracle, st, ALPHAS[:2], n_lambda=3, progress=None)


class _Recorder:
    def __init__(self, oracle):
        self.o, self.labels = oracle, []

    def __getattr__(self, name):
        return getattr(self.o, name)

    def evaluate(self, *a, label="", **kw):
        self.labels.append(label)
        return self.o.evaluate(*a, label=label, **kw)


def test_job_labels_name_lambda_alphas_folds_and_pass(camp20k):
    st, oracle, _, _ = camp20k
    rec = _Recorder(oracle)
    cross_validate(rec, st, ALPHAS[:2], n_lambda=3, progress=None)
    path = [lb for lb in rec.labels if "lambda " in lb and "pass" in lb]
    assert path and all("alphas [0,0.1]" in lb and "folds 0-2 + full data" in lb for lb in path)
    assert any("lambda 2/3" in lb and "pass 1 (+ held-out metrics of lambda 1/3)" in lb for lb in path)
    assert any("null models" in lb for lb in rec.labels)
    last = max(i for i, lb in enumerate(rec.labels) if "held-out metrics of the last lambda" in lb)
    relaxed = rec.labels[last + 1:]
    assert relaxed and all(lb == "cv: relaxed refits" for lb in relaxed[:-1])
    assert relaxed[-1].startswith("cv: held-out deviance of relaxed blends")


def test_on_point_streams_complete_rows(camp20k):
    st, oracle, _, _ = camp20k
    rows = []
    res = cross_validate(oracle, st, ALPHAS[:2], n_lambda=3, progress=None, on_point=rows.append)
    assert len(rows) == len(res.points) == 6
    assert {(r["alpha_index"], r["lambda_index"]) for r in rows} == set(res.points)
    t = res.table(st)
    t = t[t["relax"] == 1.0].set_index(["alpha_index", "lambda_index"])
    for r in rows:
        assert not r["chosen"] and np.isfinite(r["mean_deviance"])
        assert r["mean_deviance"] == t.loc[(r["alpha_index"], r["lambda_index"]), "mean_deviance"]

    def bad(_row):
        raise RuntimeError("hook broke")

    with pytest.warns(RuntimeWarning, match="on_point hook failed"):
        again = cross_validate(oracle, st, ALPHAS[:1], n_lambda=2, progress=None, on_point=bad)
    assert again.chosen is not None


def test_explicit_lambda_list_is_one_grid_for_every_alpha(camp20k):
    st, oracle, _, _ = camp20k
    res = cross_validate(oracle, st, [0.0, 0.2], lambdas=[0.002, 0.02, 0.005], progress=None, rule="min")
    for g in res.grids:
        assert list(g) == [0.02, 0.005, 0.002]
    assert len(res.points) == 6 and res.chosen is not None
    assert np.all(np.isfinite(res.lambda_max))        # still computed (table's lambda_ratio)
    one = cross_validate(oracle, st, ALPHAS, lambdas=[0.01], progress=None, rule="min")
    assert len(one.points) == 3 and one.chosen[1] == 0  # alpha chosen at a fixed lambda


def test_run_fit_refuses_a_path_from_alpha_one(tmp_path):
    from segmentation.config import parse_config
    from segmentation.errors import ConfigError
    from segmentation.workflow import run_fit

    cfg = parse_config({"data": {"exposures": str(tmp_path / "x"), "covariates": ["x1"]},
                        "segments": {"s": ["a", "b"]}, "model": {"alpha": [0.2, 1.0]},
                        "output": {"model_dir": str(tmp_path / "m")}, "mlflow": {"enabled": False}})
    with pytest.raises(ConfigError, match="model.alpha"):
        run_fit(cfg, spark=object())


def test_run_fit_refuses_an_adaptive_single_fit_and_bad_relax_values(tmp_path):
    from segmentation.config import parse_config
    from segmentation.errors import ConfigError
    from segmentation.workflow import run_fit

    raw = {"data": {"exposures": str(tmp_path / "x"), "covariates": ["x1"]},
           "segments": {"s": ["a", "b"]}, "model": {"alpha": 0.2, "lambda": 0.01, "adaptive": True},
           "output": {"model_dir": str(tmp_path / "m")}, "mlflow": {"enabled": False}}
    with pytest.raises(ConfigError, match="model.adaptive"):
        run_fit(parse_config(raw), spark=object())
    raw["model"] = {}
    raw["cv"] = {"relax": [0.5, 1.5]}
    with pytest.raises(ConfigError, match="cv.relax"):
        parse_config(raw)
    raw["cv"] = {"relax": False}
    assert parse_config(raw).cv.relax_grid == ()
    raw["cv"] = {"relax": [0.5]}
    assert parse_config(raw).cv.relax_grid == (0.5, 1.0)


def test_real_separation_drops_alpha_zero_only():
    """Segment B's rows are separated by x3: with alpha = 0 (gamma unpenalised) its null model
    diverges, so alpha = 0 is dropped with a table row saying why; alpha = 0.2 runs its path."""
    from segmentation.oracle.local import LocalOracle
    from segmentation.solver.structure import SegmentStructure

    rng = np.random.default_rng(0)
    st = SegmentStructure.from_mapping({"A": ["a1", "a2", "a3"], "B": ["b1", "b2"]})
    n = 6000
    X = rng.normal(size=(n, 3))
    cr = rng.integers(0, 5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(1 - 0.8 * X[:, 0] + 0.5 * X[:, 1]))).astype(float)
    y[cr >= 3] = (X[cr >= 3, 2] > 0).astype(float)
    oracle = LocalOracle.from_arrays(X, y, cr, rng.integers(0, 3, n), n_creatives=5, n_folds=3)
    with pytest.warns(RuntimeWarning, match="alpha=0: no lambda could be fitted"):
        res = cross_validate(oracle, st, [0.0, 0.2], n_lambda=4, progress=None)
    assert set(res.stopped) == {0} and "separable" in res.stopped[0]
    assert {a for a, _ in res.points} == {1} and res.chosen[0] == 1
    t = res.table(st)
    assert len(t) == 5 and t.iloc[0]["lambda_index"] == -1 and "null model" in t.iloc[0]["warning"]
    assert res.selection_info()["grid"]["0"] == [] and "0" in res.selection_info()["stopped_paths"]
