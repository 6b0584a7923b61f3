"""A killed ``segment fit`` resumes where it stopped: real CLI processes, SIGKILL by pid.

One sequence of attempts on the same model directory (each needs the state the previous left):

1. an uninterrupted fit into another directory: the reference (run alongside 2 and 3);
2. a fit killed (SIGKILL) once 2 lambda indices are checkpointed;
3. a rerun with ``--no-resume``: starts afresh (its checkpoint has one attempt), killed after 3;
4. a plain rerun: resumes attempt 3's checkpoint at index 3 and gives the reference's model
   (coefficients to 1e-8) and CV table; the checkpoint and the killed runs' block directories
   are gone; in MLflow both killed runs are KILLED and the last run names the one it continues.

A changed config or input never resumes: ``test_fingerprint_changes_with_config_and_data``
(real ``prepare`` on the session's Spark) and ``tests/selection/test_checkpoint.py``.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from segmentation.resume import checkpoint_dir

from fit_processes import fit_config, kill_after_steps, model_coefficients, run_fit_cli, start_fit, stop_group

pytestmark = pytest.mark.slow


@pytest.fixture
def campaign(small_campaign):
    return small_campaign


def _fresh(state: dict) -> bool:
    return len(state["attempts"]) == 1


def _block_versions(tmp) -> list[str]:
    d = os.path.join(str(tmp), "blocks")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_killed_fit_resumes_to_the_uninterrupted_result(campaign, tmp_path):
    db = str(tmp_path / "mlflow.db")
    model_dir = str(tmp_path / "model")
    ref_dir = str(tmp_path / "reference")
    cfg = fit_config(tmp_path, campaign, model_dir, mlflow_db=db)
    ref_cfg = fit_config(tmp_path, campaign, ref_dir, name="reference", blocks="blocks-reference")

    ref_proc = start_fit(ref_cfg, log_path=str(tmp_path / "reference.log"))   # 1, alongside 2-3
    try:
        states = _attempts(tmp_path, cfg, model_dir)
    finally:
        ref_proc.wait(timeout=2400)
        stop_group(ref_proc)
    assert ref_proc.returncode == 0, open(tmp_path / "reference.log").read()
    assert not os.path.exists(checkpoint_dir(ref_dir))                   # removed once published
    r = run_fit_cli(cfg, timeout=2400)                                    # 4
    _check_resumed(tmp_path, r, db, model_dir, ref_dir, states)


def _attempts(tmp_path, cfg, model_dir):
    s2 = kill_after_steps(cfg, model_dir, 2)                              # 2
    assert _fresh(s2)
    assert _block_versions(tmp_path), "the killed run should have left its block files"

    s3 = kill_after_steps(cfg, model_dir, 3, "--no-resume",               # 3
                          log_path=str(tmp_path / "run3.log"))
    assert _fresh(s3) and s3["fingerprint"] == s2["fingerprint"]
    log3 = open(tmp_path / "run3.log").read()
    assert "a fresh start was asked for" in log3
    # run 3 swept run 2's block directory (owner dead, grace 0) and left its own when killed
    assert "left by a dead run (pid" in log3
    assert len(_block_versions(tmp_path)) == 1

    return s2, s3


def _check_resumed(tmp_path, r, db, model_dir, ref_dir, states):
    from mlflow.tracking import MlflowClient

    s2, s3 = states
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    k = s3["steps_on_disk"]                                               # 3 (one more if slow to die)
    assert f"resuming after lambda {k}/5" in out, out
    assert not os.path.exists(checkpoint_dir(model_dir))
    assert _block_versions(tmp_path) == [], "block directories of killed runs were not swept"

    ref, got = model_coefficients(ref_dir), model_coefficients(model_dir)
    assert ref.keys() == got.keys()
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=1e-8, err_msg=name)
    t_ref = pd.read_csv(os.path.join(ref_dir, "cv_table.csv"))
    t_got = pd.read_csv(os.path.join(model_dir, "cv_table.csv"))
    assert list(t_ref.columns) == list(t_got.columns) and len(t_ref) == len(t_got) == 5 * 3
    num = t_ref.select_dtypes("number").columns
    np.testing.assert_allclose(t_got[num].to_numpy(float), t_ref[num].to_numpy(float),
                               rtol=1e-9, atol=1e-12, equal_nan=True)
    other = [c for c in t_ref.columns if c not in num]
    assert t_got[other].fillna("").equals(t_ref[other].fillna(""))

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    killed = [s["attempts"][-1]["run_id"] for s in (s2, s3)]
    for run_id in killed:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED", (run_id, run.info.status)
        assert "continued by run" in run.data.tags["segmentation.ended"]
    last = client.search_runs([client.get_experiment_by_name("robustness").experiment_id],
                              "tags.`segmentation.kind` = 'fit'", order_by=["start_time DESC"])[0]
    assert last.info.status == "FINISHED"
    assert last.data.tags["segmentation.resumed_from_run_id"] == killed[-1]
    assert last.data.tags["segmentation.attempt"] == "2"
    assert last.data.tags["segmentation.resumed_lambda_steps"] == str(k)
    # every grid point has its child run in the resumed parent, restored ones included
    children = client.search_runs([last.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{last.info.run_id}'")
    assert len(children) == 5


def test_fingerprint_changes_with_config_and_data(spark, campaign, tmp_path):
    """Same config and data: same fingerprint; a changed config key that decides the numbers,
    a touched input file, or other data: a different one (so no stale resume); keys that only
    move work around (block_dir, MLflow, output) leave it alone."""
    import shutil

    from segmentation.config import load_config
    from segmentation.pipeline import prepare
    from segmentation.resume import fingerprint

    data = str(tmp_path / "campaign")
    shutil.copytree(campaign, data)
    path = fit_config(tmp_path, data, str(tmp_path / "model"))

    def fp(*overrides, doc=False):
        cfg = load_config(path, list(overrides))
        prepared = prepare(spark, cfg, n_folds=cfg.cv.folds)
        try:
            out = fingerprint(cfg, prepared)
            return out if doc else out[0]
        finally:
            prepared.release()

    base, base_doc = fp(doc=True)
    again, again_doc = fp(doc=True)
    for part in base_doc:
        assert again_doc[part] == base_doc[part], part
    assert again == base
    assert fp("data.block_dir=" + str(tmp_path / "other"), "mlflow.enabled=false",
              "output.model_dir=" + str(tmp_path / "elsewhere")) == base
    assert fp("cv.rule=min") != base
    assert fp("model.n_lambda=4") != base
    assert fp("cv.seed=1") != base
    part = sorted(f for f in os.listdir(os.path.join(data, "exposures")) if f.endswith(".parquet"))[0]
    f = os.path.join(data, "exposures", part)
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))             # same bytes, new mtime
    touched = fp()
    assert touched != base
    # other rows under the same file names (file sizes and what prepare() measures differ)
    from segmentation.data.simulate import simulate_campaign

    other = str(tmp_path / "other-campaign")
    simulate_campaign(other, n_users=6_000, seed=6, overwrite=True, chunk_size=4_000)
    for name in sorted(os.listdir(os.path.join(data, "exposures"))):
        if name.endswith(".parquet"):
            os.remove(os.path.join(data, "exposures", name))
    for name in sorted(os.listdir(os.path.join(other, "exposures"))):
        if name.endswith(".parquet"):
            dst = os.path.join(data, "exposures", name)
            shutil.copy(os.path.join(other, "exposures", name), dst)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fp() != touched
