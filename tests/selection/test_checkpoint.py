"""Checkpointed paths (numpy oracle): a path interrupted after k lambda indices and resumed from
its checkpoint gives the same grid points, table and chosen model as an uninterrupted one;
stage files round-trip bit for bit; a different fingerprint starts afresh."""
from __future__ import annotations

import numpy as np
import pytest

from segmentation.selection.checkpoint import PathCheckpoint, dumps, loads
from segmentation.selection.cv import cross_validate

from cv_testdata import planted

ALPHAS = [0.1, 0.2]
KW = dict(n_lambda=5, lambda_min_ratio=0.02, rule="1se", relax=(0.0, 0.5, 1.0), progress=None)


class Interrupted(Exception):
    pass


class StopAfter(PathCheckpoint):
    """A checkpoint that raises right after writing stage ``stop`` (the run dies there)."""
    stop = None

    def save(self, stage, obj):
        super().save(stage, obj)
        if stage == self.stop:
            raise Interrupted(stage)


@pytest.fixture(scope="module")
def camp():
    return planted(8_000, seed=1, n_folds=3, n_blocks=2)


@pytest.fixture(scope="module")
def reference(camp):
    st, oracle, _, _ = camp
    return cross_validate(oracle, st, ALPHAS, **KW)


def _same(a, b):
    assert sorted(a.points) == sorted(b.points)
    for key in a.points:
        pa, pb = a.points[key], b.points[key]
        np.testing.assert_array_equal(pa.full.beta, pb.full.beta)
        for fa, fb in zip(pa.folds, pb.folds):
            np.testing.assert_array_equal(fa.beta, fb.beta)
        np.testing.assert_array_equal(pa.heldout_deviance, pb.heldout_deviance)
    assert (a.chosen, a.chosen_relax) == (b.chosen, b.chosen_relax)
    np.testing.assert_array_equal(a.final_fit.beta, b.final_fit.beta)
    ta, tb = a.table(), b.table()
    assert ta.equals(tb)


@pytest.mark.parametrize("stop", ["null", "step-00002", "path", "relax"])
def test_resume_after_each_stage_gives_the_uninterrupted_result(camp, reference, tmp_path, stop):
    st, oracle, _, _ = camp
    d = str(tmp_path / "ck")
    ck = StopAfter.open(d, "fp-1", attempt={"run_id": "first"})
    ck.stop = stop
    with pytest.raises(Interrupted):
        cross_validate(oracle, st, ALPHAS, checkpoint=ck, **KW)
    ck2 = PathCheckpoint.open(d, "fp-1", attempt={"run_id": "second"})
    assert ck2.previous["run_id"] == "first" and ck2.attempt == 2
    passes0 = oracle.passes
    res = cross_validate(oracle, st, ALPHAS, checkpoint=ck2, **KW)
    assert "null" in ck2.restored and stop in ck2.restored
    if stop.startswith("step-"):
        k = int(stop[5:])
        assert [s for s in ck2.restored if s.startswith("step-")] == [f"step-{j:05d}" for j in range(k + 1)]
    _same(res, reference)
    if stop == "relax":
        assert oracle.passes == passes0      # nothing left to compute


def test_other_fingerprint_or_no_resume_starts_afresh(camp, tmp_path):
    st, oracle, _, _ = camp
    d = str(tmp_path / "ck")
    ck = StopAfter.open(d, "fp-1")
    ck.stop = "step-00001"
    with pytest.raises(Interrupted):
        cross_validate(oracle, st, ALPHAS, checkpoint=ck, **KW)
    fresh = PathCheckpoint.open(d, "fp-2")
    assert fresh.previous is None and fresh.discarded and fresh.attempt == 1 and not fresh.has("null")
    ck = StopAfter.open(d, "fp-2")
    ck.stop = "null"
    with pytest.raises(Interrupted):
        cross_validate(oracle, st, ALPHAS, checkpoint=ck, **KW)
    again = PathCheckpoint.open(d, "fp-2", resume=False)
    assert again.previous is None and not again.has("null")


def test_stage_files_round_trip_exactly(reference):
    pt = reference.points[(0, 2)]
    obj = {"points": {(0, 2): pt}, "x": (1, None, float("nan"), float("inf")),
           "relax": reference.relax}
    back = loads(dumps(obj))
    q = back["points"][(0, 2)]
    np.testing.assert_array_equal(q.full.gamma, pt.full.gamma)
    np.testing.assert_array_equal(q.full.fused, pt.full.fused)
    assert q.full.fused.dtype == bool and q.full.objective == pt.full.objective
    assert back["x"][0] == 1 and back["x"][1] is None and np.isnan(back["x"][2]) and back["x"][3] == np.inf
    assert back["relax"].scored.keys() == reference.relax.scored.keys()
    with pytest.raises(TypeError):
        dumps({"f": object()})


def test_resume_in_diagonal_mode_keeps_the_solver_state(camp, tmp_path):
    """Diagonal curvature: a fit warm-started from a FitResult also reuses its last oracle answer
    and Anderson secants; the checkpoint keeps them, so the resumed path is still bit for bit."""
    st, oracle, _, _ = camp
    kw = dict(KW, curvature="diagonal", relax=None)
    ref = cross_validate(oracle, st, ALPHAS, **kw)
    d = str(tmp_path / "ck")
    ck = StopAfter.open(d, "fp-d")
    ck.stop = "step-00001"
    with pytest.raises(Interrupted):
        cross_validate(oracle, st, ALPHAS, checkpoint=ck, **kw)
    res = cross_validate(oracle, st, ALPHAS, checkpoint=PathCheckpoint.open(d, "fp-d"), **kw)
    _same(res, ref)


def test_only_the_latest_warm_starts_keep_their_hessians(camp, reference, tmp_path):
    """Lazy curvature carries each fit's K x p x p Hessians to the next lambda: the step files
    keep them for the last step only (the one a resumed run starts from), and the finished
    result keeps none."""
    st, oracle, _, _ = camp
    ck = PathCheckpoint.open(str(tmp_path / "ck"), "fp-h", attempt={"run_id": "h"})
    res = cross_validate(oracle, st, ALPHAS, checkpoint=ck, **KW)
    _same(res, reference)

    def hessians(points):
        return [f.hess is not None and f.hess.ndim == 3
                for p in points.values() for f in [p.full] + list(p.folds)]

    assert not any(hessians(res.points))
    assert not any(f.hess is not None for fits in res.relax.refits.values() for f in fits)
    last = ck.steps_done() - 1
    assert last >= 1
    for k in range(last + 1):
        kept = hessians(ck.load(ck.step_name(k))["points"])
        assert all(kept) if k == last else not any(kept), k


def test_above_the_carry_budget_no_hessians_are_kept_and_resume_is_exact(camp, reference, tmp_path,
                                                                          monkeypatch):
    """At large p the path drops each step's Hessians (``CARRY_HESSIAN_BYTES``): nothing K p^2
    goes to the checkpoint, every fit computes its own first Hessians, a resumed run still
    gives the uninterrupted numbers bit for bit, and the solutions are the carrying path's."""
    import segmentation.selection.cv as cvmod

    st, oracle, _, _ = camp
    monkeypatch.setattr(cvmod, "CARRY_HESSIAN_BYTES", 0)
    plain = cross_validate(oracle, st, ALPHAS, **KW)
    for key, p in plain.points.items():
        ref = reference.points[key]
        for a, b in zip([p.full] + list(p.folds), [ref.full] + list(ref.folds)):
            assert abs(a.objective - b.objective) <= 1e-9 * abs(b.objective)
            np.testing.assert_array_equal(a.fused, b.fused)
    d = str(tmp_path / "ck")
    ck = StopAfter.open(d, "fp-nc", attempt={"run_id": "first"})
    ck.stop = "step-00002"
    with pytest.raises(Interrupted):
        cross_validate(oracle, st, ALPHAS, checkpoint=ck, **KW)
    for k in range(3):
        pts = ck.load(ck.step_name(k))["points"]
        assert all(f.hess is None for p in pts.values() for f in [p.full] + list(p.folds))
    ck2 = PathCheckpoint.open(d, "fp-nc", attempt={"run_id": "second"})
    _same(cross_validate(oracle, st, ALPHAS, checkpoint=ck2, **KW), plain)
