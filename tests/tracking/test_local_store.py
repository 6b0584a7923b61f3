"""Runs started together against the same *new* default sqlite store (``sqlite:///<cwd>/mlflow.db``)
all open it: MLflow's schema migration runs once, under ``tracking.local_store.store_lock``.

Real processes, started to the same instant, each doing what ``segment fit`` does before any
Spark work (``start_fit_tracking``: resolve the URI, open the store, get or create the
experiment, open the parent run) and then finishing its run. Without the lock two processes
migrating one new file fail in alembic ('Online migration expected to match one row ...').
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import pytest

from segmentation.tracking.local_store import sqlite_path, store_lock

RUN = r"""
import json, os, sys, time
from segmentation.config import SegmentConfig
from segmentation.tracking.session import start_fit_tracking

raw, go = json.loads(sys.argv[1]), sys.argv[2]
cfg = SegmentConfig.model_validate(raw)
print("ready", flush=True)
while not os.path.exists(go):          # every process imported: start together
    time.sleep(0.001)
tracker = start_fit_tracking(cfg)
tracker.finish("FINISHED")
print(json.dumps({"run_id": tracker.run_id, "uri": tracker.uri}))
"""


def _config(model_dir: str) -> dict:
    from segmentation.workflow import demo_config

    raw = demo_config("/no/data", model_dir)
    raw.pop("segments_file")
    raw["segments"] = {"s1": ["c1", "c2"]}
    raw["mlflow"] = {"experiment": "concurrent"}          # default URI: sqlite:///<cwd>/mlflow.db
    return raw


@pytest.mark.parametrize("attempt", range(2))
def test_runs_creating_one_new_sqlite_store_at_once_all_succeed(tmp_path, attempt):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    n = 3
    go = tmp_path.parent / f"go-{attempt}"
    procs = [subprocess.Popen([sys.executable, "-c", RUN, json.dumps(_config(str(tmp_path / f"m{i}"))),
                               str(go)], cwd=str(tmp_path), env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(n)]
    outs = []
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.communicate()[1][-3000:]
        go.write_text("")
        for p in procs:
            out, err = p.communicate(timeout=120)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rc, out, err in outs:
        assert rc == 0, err[-3000:]
    done = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in outs]
    db = tmp_path / "mlflow.db"
    assert {d["uri"] for d in done} == {f"sqlite:///{db}"}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(d["run_id"] for d in done)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert os.listdir(tmp_path) == ["mlflow.db"]          # no lock file left beside it


def test_sqlite_path_and_lock_scope(tmp_path):
    assert sqlite_path(f"sqlite:///{tmp_path}/a/mlflow.db") == f"{tmp_path}/a/mlflow.db"
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("http://127.0.0.1:5000") is None and sqlite_path("databricks") is None
    with store_lock(f"sqlite:///{tmp_path}/new/mlflow.db"):
        assert os.path.isdir(tmp_path / "new")               # the directory is made to be locked
    with store_lock("http://127.0.0.1:5000"):
        pass
