"""``spark-submit`` to a real standalone cluster whose executors share no files with the driver.

Two workers, each in its own mount namespace (private /dev/shm, /tmp and checkout; only the
virtualenv is visible, as on a cluster image), bound to their own loopback addresses
(``harness.StandaloneCluster``). The package reaches the executors as users ship it: a wheel
built here and passed with ``--py-files``. Input data and outputs live in the cluster's shared
directory (the stand-in for HDFS/S3). What must hold:

- fit with CV then assign give local mode's model and assignments (coefficients to 1e-8);
- the block-file store fails there with a message naming ``data.block_dir`` (exit 2, nothing
  written), while the default data path (blocks cached by Spark) succeeds;
- evaluate and allocate (coarse personalization) give local mode's values, plan and table;
- an executor killed by pid mid-CV, and then a whole worker killed, do not change the model.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from chispa import assert_approx_df_equality

import harness
from e2e_common import (allocation_config, assert_same_allocation, assert_same_policy_values,
                         model_betas, small_cv_config, with_output_dir, write_yaml)
from harness import StandaloneCluster, build_wheel, spark_submit, start_or_skip

pytestmark = pytest.mark.slow

JOBS = harness.repo_root() / "jobs"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = start_or_skip(lambda: StandaloneCluster(n_workers=2, cores=1, memory="3g",
                                                log_dir=tmp_path_factory.mktemp("cluster-logs")),
                      "standalone cluster")
    yield c
    c.stop()
    assert not c.all_pids()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def shared(cluster):
    from segmentation.data.simulate import simulate_campaign

    root = cluster.shared_dir()
    simulate_campaign(str(root / "campaign"), n_users=6000, seed=5, overwrite=True)
    return root


def _submit_args(cluster, wheel, script: str, *args) -> list[str]:
    conf = cluster.driver_conf(executor_memory="1g")
    out = ["--master", conf.pop("spark.master"), "--py-files", str(wheel)]
    for k, v in conf.items():
        out += ["--conf", f"{k}={v}"]
    return [*out, str(JOBS / script), *args]


@pytest.fixture(scope="module")
def local_model(spark, shared):
    from segmentation.config import parse_config
    from segmentation.workflow import run_assign, run_fit

    cfg = parse_config(small_cv_config(shared, "local"))
    run_fit(cfg, spark=spark)
    out = str(shared / "local" / "assignments")
    run_assign(cfg.output.model_dir, str(shared / "campaign" / "exposures"), out, spark=spark)
    return {"model_dir": cfg.output.model_dir, "assign": out}


@pytest.fixture(scope="module")
def cluster_fit(cluster, wheel, shared):
    cfg = small_cv_config(shared, "cluster")
    r = spark_submit(_submit_args(cluster, wheel, "fit.py", write_yaml(cfg, shared / "cluster" / "fit.yaml")),
                     timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return {"cfg": cfg, "stderr": r.stdout + r.stderr}


def test_executors_cannot_see_driver_files(cluster, wheel, shared, tmp_path):
    """The block-file store fails on this cluster, naming data.block_dir; nothing is written."""
    cfg = small_cv_config(shared, "files", store="files", block_dir=str(tmp_path / "blocks"))
    r = spark_submit(_submit_args(cluster, wheel, "fit.py", write_yaml(cfg, shared / "files" / "fit.yaml")),
                     timeout=600)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-4000:]
    said = r.stdout + r.stderr       # spark-submit relays the Python driver's stderr on stdout
    assert "error: config key 'data.block_dir'" in said, said[-4000:]
    assert "not visible on the driver" in said
    assert not os.path.exists(cfg["output"]["model_dir"])
    blocks = tmp_path / "blocks"
    assert not blocks.exists() or not os.listdir(blocks)      # the staged version was removed


def test_fit_with_cv_on_cluster_equals_local_mode(cluster_fit, local_model):
    assert "data path: spark (master spark://127.0.0.1:" in cluster_fit["stderr"]
    assert "shipped by spark-submit --py-files creative_segmentation-" in cluster_fit["stderr"]
    b_cluster, m_cluster = model_betas(cluster_fit["cfg"]["output"]["model_dir"])
    b_local, m_local = model_betas(local_model["model_dir"])
    # the executors read the Parquet files themselves (pyarrow in the tasks), from the shared dir
    assert m_cluster["data"]["reader"] == m_local["data"]["reader"] == "arrow"
    assert m_cluster["lambda"] == pytest.approx(m_local["lambda"], rel=1e-10)
    assert [c["fused"] for c in m_cluster["creatives"]] == [c["fused"] for c in m_local["creatives"]]
    np.testing.assert_allclose(b_cluster, b_local, rtol=1e-8, atol=1e-10)


def test_assign_on_cluster_equals_local_mode(spark, cluster, wheel, shared, cluster_fit, local_model):
    out = str(shared / "cluster" / "assignments")
    r = spark_submit(_submit_args(cluster, wheel, "assign.py", "--model", cluster_fit["cfg"]["output"]["model_dir"],
                                  "--input", str(shared / "campaign" / "exposures"), "--output", out),
                     timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    got, want = spark.read.parquet(out), spark.read.parquet(local_model["assign"])
    assert got.count() == want.count() > 0
    assert_approx_df_equality(got, want, 1e-9, ignore_row_order=True, ignore_column_order=True)


def test_evaluate_on_cluster_equals_local_mode(spark, cluster, wheel, shared, cluster_fit, local_model):
    """The cross-fitted evaluation (fold refits through the Spark-cached blocks, K-means by
    MLlib on the executors, the estimator terms) gives local mode's values and intervals."""
    from segmentation.config import parse_config
    from segmentation.evaluation.run import run_evaluation
    from segmentation.model import SegmentationModel

    r = spark_submit(_submit_args(cluster, wheel, "evaluate.py", str(shared / "cluster" / "fit.yaml")),
                     timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    with open(os.path.join(cluster_fit["cfg"]["output"]["model_dir"], "evaluation.json")) as fh:
        got = json.load(fh)["summary"]["policies"]
    model = SegmentationModel.load(os.path.join(local_model["model_dir"], "model.json"))
    want = run_evaluation(spark, parse_config(small_cv_config(shared, "local")), model, write=False,
                          log_mlflow=False)
    assert_same_policy_values(got, want.to_dict()["summary"]["policies"])


def test_allocate_on_cluster_equals_local_mode(spark, cluster, wheel, shared):
    """Coarse personalization with a control arm and share limits: the cluster's offered set,
    prices and assignment table are local mode's."""
    from segmentation.config import parse_config
    from segmentation.workflow import run_allocate, run_fit

    root = shared / "allocate"
    raw = allocation_config(root)
    run_fit(parse_config(raw), spark=spark)
    run_allocate(parse_config(with_output_dir(raw, root / "local")), spark=spark)
    remote = write_yaml(with_output_dir(raw, root / "cluster"), root / "cluster.yaml")
    r = spark_submit(_submit_args(cluster, wheel, "allocate.py", remote), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert_same_allocation(spark, root / "cluster", root / "local")


def _fit_while(cluster, wheel, shared, name: str, action) -> tuple[subprocess.CompletedProcess, dict]:
    """Run a CV fit with spark-submit; once the CV path is under way, call ``action()``."""
    cfg = small_cv_config(shared, name)
    args = _submit_args(cluster, wheel, "fit.py", write_yaml(cfg, shared / name / "fit.yaml"))
    env = harness.spark_env({"PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([harness.spark_bin("spark-submit"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    err_lines: list[str] = []
    drain = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    drain.start()
    out_lines, acted = [], None
    try:
        for line in proc.stdout:
            out_lines.append(line)
            if acted is None and line.startswith("[cv] lambda 2/"):
                acted = action()
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            harness.terminate_tree([proc])
    drain.join(timeout=10)
    return subprocess.CompletedProcess(args, proc.returncode, "".join(out_lines), "".join(err_lines)), \
        {"cfg": cfg, "acted": acted}


def test_lost_executor_mid_cv_does_not_change_the_model(cluster, wheel, shared, cluster_fit):
    def kill_one():
        pids = cluster.executor_pids()
        assert len(pids) == 2, pids
        cluster.kill_executor(pids[0])
        deadline = time.time() + 10
        while harness.pid_alive(pids[0]) and time.time() < deadline:
            time.sleep(0.1)
        return pids[0]

    r, info = _fit_while(cluster, wheel, shared, "killed-executor", kill_one)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert info["acted"] is not None and not harness.pid_alive(info["acted"])
    said = r.stdout + r.stderr
    assert "Lost executor" in said or "ExecutorLost" in said, said[-4000:]
    b, m = model_betas(info["cfg"]["output"]["model_dir"])
    b_ref, m_ref = model_betas(cluster_fit["cfg"]["output"]["model_dir"])
    assert m["lambda"] == m_ref["lambda"]
    np.testing.assert_allclose(b, b_ref, rtol=1e-8, atol=1e-10)


def test_bad_input_on_cluster_named_exit_2_nothing_written(cluster, wheel, shared):
    cfg = small_cv_config(shared, "bad", response_col="x1")      # continuous, not 0/1
    r = spark_submit(_submit_args(cluster, wheel, "fit.py", write_yaml(cfg, shared / "bad" / "fit.yaml")),
                     timeout=600)
    said = r.stdout + r.stderr
    assert r.returncode == 2, said[-4000:]
    assert "error:" in said and "'x1'" in said, said[-4000:]
    assert not os.path.exists(cfg["output"]["model_dir"])


def test_lost_worker_mid_cv_does_not_change_the_model(cluster, wheel, shared, cluster_fit):
    """Last in this module: it leaves the cluster with one worker."""
    def kill_worker():
        out = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True).stdout
        mine = set(cluster.worker_pids) | set(harness.descendants(cluster.worker_pids))
        jvms = [int(line.split()[0]) for line in out.splitlines()
                if harness.WORKER_CLASS in line and "127.0.0.3" in line and int(line.split()[0]) in mine]
        assert len(jvms) == 1, jvms
        os.kill(jvms[0], signal.SIGKILL)
        return jvms[0]

    r, info = _fit_while(cluster, wheel, shared, "killed-worker", kill_worker)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert info["acted"] is not None
    b, m = model_betas(info["cfg"]["output"]["model_dir"])
    b_ref, _ = model_betas(cluster_fit["cfg"]["output"]["model_dir"])
    np.testing.assert_allclose(b, b_ref, rtol=1e-8, atol=1e-10)
