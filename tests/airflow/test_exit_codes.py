"""What a scheduler sees when a job fails: spark-submit of jobs/*.py passes the job's exit code
on (2 bad input or config, 1 unexpected) and the job's output ends with one ``error: ...`` line
naming the reason (Airflow's SparkSubmitOperator fails the task on the code and logs the line).

Under spark-submit the Python driver's stderr reaches spark-submit's *stdout* (Spark's
PythonRunner merges the Python process's two streams; Spark's own log4j lines go to stderr), so
that is where the line is looked for; run directly (``segment ...``) it is on stderr."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _submit(job, *args, cwd):
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run([os.path.join(bindir, "spark-submit"), "--master", "local[1]",
                           os.path.join(REPO, "jobs", job), *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error: ")]


def test_bad_config_exits_2_with_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("data:\n  exposures: x\n  covariatez: [x1]\n"
                                       "segments: {a: [c1]}\nmodel: {alpha: 2}\noutput: {model_dir: m}\n")
    r = _submit("fit.py", "bad.yaml", "--set", "mlflow.tags.airflow.ds=2024-01-01", cwd=tmp_path)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = _error_lines(r.stdout)
    assert len(lines) == 1 and r.stdout.rstrip().splitlines()[-1] == lines[0]
    assert "config key 'data.covariatez'" in lines[0] and "config key 'model.alpha'" in lines[0]
    assert not (tmp_path / "m").exists()


def _tiny_model_dir(path):
    """A valid one-covariate model directory (no Spark needed to write it)."""
    import numpy as np

    from segmentation.data.encode import Encoding
    from segmentation.model import SegmentationModel

    enc = Encoding(numeric=["x1"], categorical=[], levels={}, reference={}, level_counts={},
                   feature_names=["intercept", "x1"], mean=[0.0, 0.0], sd=[1.0, 1.0])
    g = np.array([[0.1, 0.5], [0.0, -0.5]])
    SegmentationModel(features=enc.feature_names, segments=["a", "b"], creatives=["a1", "b1"],
                      segment_of=[0, 1], gamma=g, beta=g, gamma_fit=g, beta_fit=g,
                      fused=np.ones(2, bool), lam=0.1, alpha=0.1, encoding=enc.to_dict(),
                      data={"user_col": "user_id"}).save(str(path))


def test_corrupt_model_json_exits_2_with_one_line_naming_the_file(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text('{"features": 3')       # truncated file
    r = _submit("assign.py", "--model", "model", "--input", "users", "--output", "out", cwd=tmp_path)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stdout + r.stderr
    last = r.stdout.rstrip().splitlines()[-1]
    assert _error_lines(r.stdout) == [last]
    assert str(tmp_path / "model" / "model.json") in last and "is not valid JSON" in last
    assert not (tmp_path / "out").exists()


def test_unexpected_failure_exits_1_with_traceback_then_one_line(tmp_path):
    _tiny_model_dir(tmp_path / "model")
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "part-0.parquet").write_text("not parquet")      # unreadable input
    r = _submit("assign.py", "--model", "model", "--input", "users", "--output", "out", cwd=tmp_path)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" in r.stdout
    last = r.stdout.rstrip().splitlines()[-1]
    assert last.startswith("error: unexpected ") and _error_lines(r.stdout) == [last]
    assert not (tmp_path / "out").exists()
