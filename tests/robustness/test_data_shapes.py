"""A campaign the other tests never see: 80 creatives in 10 segments of uneven size, some
creatives shown to a few hundred users, click rates of 0.1-1%, several creatives with no click
at all (``data_shapes_testdata.many_creatives_campaign``).

What must happen (README, "Rare clicks, many creatives"):
- a creative with zero clicks inside a segment is handled by the penalty: with lambda > 0 and
  0 < alpha < 1 its deviation from the segment is penalised, so it is fused with (or stays
  close to) its segment and every coefficient is finite; the data check warns about it;
- where the penalty leaves a direction free (alpha = 0: a segment's gamma is unpenalised, so a
  rare-click segment's pooled fit can be separable), the fit stops with a SeparationError
  naming the creatives; in a cross-validated path only that alpha stops (named in the warning,
  ``stopped_paths`` of model.json) and the others are selected from;
- a segment whose creatives have no click at all stops the fit before any pass, naming it;
- no NaN, no inf, no numpy overflow/invalid/divide warning anywhere on the driver (checked with
  ``np.errstate(..., 'raise')`` and every warning recorded).
"""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

from data_shapes_testdata import (MANY_SEGMENT_SIZES, many_creatives_campaign, shapes_config,
                                  write_parquet_files, write_segments_csv)
from segmentation.config import parse_config
from segmentation.errors import SeparationError
from segmentation.pipeline import fit_cv, fit_single, prepare

# a cross-validated path may drop an alpha the penalty cannot bound (or leave its relaxed refits
# out), with one of these warnings naming the creatives
STOPPED = re.compile(r"^(alpha=\S+: no lambda could be fitted|path of alpha=\S+ stopped"
                     r"|alpha=\S+: relaxed refits separate)")


class Strict:
    """Record every warning; numpy overflow / invalid / divide-by-zero raise (driver side)."""

    def __enter__(self):
        self._cw = warnings.catch_warnings(record=True)
        self.caught = self._cw.__enter__()
        warnings.simplefilter("always")
        self._err = np.errstate(over="raise", invalid="raise", divide="raise")
        self._err.__enter__()
        return self

    def __exit__(self, *exc):
        self._err.__exit__(*exc)
        return self._cw.__exit__(*exc)

    def unexpected(self):
        """Warnings other than an alpha's path stopped by separation (which names creatives)."""
        return [f"{w.category.__name__}: {w.message}" for w in self.caught
                if issubclass(w.category, (RuntimeWarning, UserWarning))
                and not STOPPED.match(str(w.message))]


def _write(sim, root, zero_segment: str | None = None):
    ex = sim.exposures
    if zero_segment is not None:
        ex = ex.copy()
        ex.loc[ex.creative.isin(sim.segments[zero_segment]), "response"] = 0
    write_parquet_files(ex, str(root / "exposures"), 3)
    write_segments_csv(sim.segments, str(root / "creatives.csv"))
    return str(root)


def _finite_model(m):
    for arr in (m.gamma, m.beta, m.gamma_fit, m.beta_fit):
        assert np.all(np.isfinite(arr))
    assert np.abs(m.beta_fit).max() < 25, np.abs(m.beta_fit).max()


@pytest.fixture(scope="module")
def campaign():
    sim = many_creatives_campaign(150_000, seed=0)
    per = sim.exposures.groupby("creative").response.agg(["size", "sum"])
    # the shape this test is about (seeded, so these hold for this simulation)
    assert len(per) == 80 and len(sim.segments) == 10
    assert sorted(len(v) for v in sim.segments.values()) == sorted(MANY_SEGMENT_SIZES)
    assert per["size"].min() < 400 and per["size"].max() > 2500
    rate = per["sum"].sum() / per["size"].sum()
    assert 0.001 <= rate <= 0.01, rate
    assert (per["sum"] == 0).sum() >= 2
    return sim, per


@pytest.mark.slow
def test_single_fit_converges_and_zero_click_creatives_fuse(spark, campaign, tmp_path):
    sim, per = campaign
    data = _write(sim, tmp_path)
    cfg = parse_config(shapes_config(data, str(tmp_path / "model"),
                                     model={"lambda": 1e-3, "alpha": 0.1}))
    zero = sorted(per.index[per["sum"] == 0])
    with Strict() as strict:
        prepared = prepare(spark, cfg)
        try:
            m = fit_single(prepared, cfg)
        finally:
            prepared.release()
    assert not strict.unexpected(), strict.unexpected()
    assert m.fit["converged"], m.fit["message"]
    _finite_model(m)
    for c in zero:                   # the penalty handles them: fused with their segment
        assert m.fused[m.creatives.index(c)], c
        assert f"creative '{c}' has no positive responses" in " ".join(m.data["warnings"])


@pytest.mark.slow
def test_default_cross_validation_on_rare_clicks(spark, tmp_path):
    """The default CV grid (5 alphas from 0, 20 lambdas, 5 folds, relaxed refits) on a smaller
    version (40k users: the rarest creatives have ~80 users and no or one click)."""
    sim = many_creatives_campaign(40_000, seed=0)
    data = _write(sim, tmp_path)
    cfg = parse_config(shapes_config(data, str(tmp_path / "model"), folds=5))
    with Strict() as strict:
        prepared = prepare(spark, cfg, n_folds=cfg.cv.folds)
        try:
            cv, m = fit_cv(prepared, cfg, progress=lambda s: None)
        finally:
            prepared.release()
    assert not strict.unexpected(), strict.unexpected()
    for w in strict.caught:            # every stop names the creatives it could not estimate
        if STOPPED.match(str(w.message)):
            assert re.search(r"'cr\d\d'", str(w.message)), str(w.message)
    # only alpha = 0 may stop (gamma unpenalised), and it says which creatives
    assert set(cv.stopped) <= {0}, cv.stopped
    for msg in cv.stopped.values():
        assert re.search(r"'cr\d\d'", msg) and "alpha > 0" in msg, msg
    assert m.alpha > 0 and m.fit["converged"], m.fit
    _finite_model(m)
    table = cv.table(prepared.structure)
    fitted = table[table.lambda_index >= 0]
    assert np.all(np.isfinite(fitted.mean_deviance.to_numpy(float)))
    assert m.selection["stopped_paths"] == {f"{cv.alphas[a]:g}": s for a, s in cv.stopped.items()}
    with open(m.save(str(tmp_path / "saved"))) as fh:      # strict JSON: no NaN / Infinity
        json.loads(fh.read(), parse_constant=lambda c: pytest.fail(f"model.json holds {c}"))
    rates = [c.get("predicted_rate") for c in m.evidence["creatives"]]
    assert len(rates) == 80 and all(r is not None and np.isfinite(r) for r in rates), rates


@pytest.mark.slow
def test_segment_without_any_click_stops_before_fitting(spark, campaign, tmp_path):
    """Every creative of one segment with zero clicks: no finite segment intercept exists; the
    fit stops before any data pass, naming the segment and its creatives."""
    sim, _ = campaign
    small = [s for s, crs in sim.segments.items() if len(crs) == 2][0]
    data = _write(sim, tmp_path, zero_segment=small)
    cfg = parse_config(shapes_config(data, str(tmp_path / "model"),
                                     model={"lambda": 1e-3, "alpha": 0.1}))
    prepared = prepare(spark, cfg)
    try:
        passes = prepared.oracle.passes
        with pytest.raises(SeparationError, match=rf"segment '{small}'") as err:
            fit_single(prepared, cfg)
        assert prepared.oracle.passes == passes
    finally:
        prepared.release()
    for c in sim.segments[small]:
        assert repr(c) in str(err.value)
    assert "no positive responses" in str(err.value)


def test_kernel_and_solver_in_process_raise_no_numpy_warning(campaign):
    """The same data through the in-memory oracle, so the per-row kernel (which runs on the
    executors under Spark, where a numpy warning would go unseen) runs under ``Strict`` too:
    the single fit converges with finite coefficients and zero-click creatives fused. Then the
    one-creative segment loses its clicks in one region (a rare-click segment whose pooled rows
    are separable): at alpha = 0 (gamma unpenalised) the fit stops naming that creative; at
    alpha = 0.1 the penalty bounds the direction and the fit converges."""
    from segmentation.oracle.local import LocalOracle
    from segmentation.solver.prox_newton import fit
    from segmentation.solver.structure import SegmentStructure

    from data_shapes_testdata import local_design

    sim, per = campaign
    X, y, cidx, _, _ = local_design(sim.exposures)
    st = SegmentStructure.from_mapping(sim.segments)
    assert list(st.creatives) == sorted(st.creatives)        # the index order local_design uses
    oracle = LocalOracle.from_arrays(X, y, cidx, n_creatives=st.n_creatives, n_blocks=3)
    single = st.creatives[-1]
    assert st.creatives_of(st.n_segments - 1).tolist() == [st.n_creatives - 1]
    cut = y.copy()
    cut[(cidx == st.n_creatives - 1) & (sim.exposures["region"] == "west").to_numpy()] = 0
    separable = LocalOracle.from_arrays(X, cut, cidx, n_creatives=st.n_creatives, n_blocks=3)
    with Strict() as strict:
        res = fit(oracle, st, 1e-3, 0.1)
        with pytest.raises(SeparationError) as err:
            fit(separable, st, 1e-3, 0.0)
        bounded = fit(separable, st, 1e-3, 0.1)
    assert not strict.unexpected(), strict.unexpected()
    assert res.converged and np.all(np.isfinite(res.beta)), res.message
    for c in per.index[per["sum"] == 0]:
        assert res.fused[st.creatives.index(c)], c
    assert re.findall(r"'(cr\d\d)'", str(err.value)) == [single], str(err.value)
    assert "alpha > 0" in str(err.value)
    assert bounded.converged and np.all(np.isfinite(bounded.beta)), bounded.message
