"""The ``segment`` command as a user runs it: subprocesses, exit codes, files on disk."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from segmentation.workflow import demo_config

SEGMENT = [sys.executable, "-m", "segmentation.cli"]


def run(*args, cwd=None):
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    return subprocess.run([*SEGMENT, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def write_config(path, raw):
    with open(path, "w") as fh:
        yaml.safe_dump(raw, fh)
    return str(path)


def test_bad_config_fails_before_spark_and_names_the_key(tmp_path):
    raw = demo_config(str(tmp_path / "nowhere"), str(tmp_path / "model"))
    raw["model"] = {"lambda": -1, "alpha": 1.5, "standardise": True}
    cfg = write_config(tmp_path / "bad.yaml", raw)
    r = run("fit", cfg)
    assert r.returncode == 2
    for key in ("model.lambda", "model.alpha", "model.standardise"):
        assert key in r.stderr
    assert "Spark" not in r.stderr and not (tmp_path / "model").exists()


def test_set_override_is_validated(tmp_path):
    raw = demo_config(str(tmp_path / "nowhere"), str(tmp_path / "model"))
    cfg = write_config(tmp_path / "c.yaml", raw)
    r = run("fit", cfg, "--set", "model.alpha=2")
    assert r.returncode == 2 and "model.alpha" in r.stderr


@pytest.mark.slow
def test_simulate_fit_assign(tmp_path):
    data = tmp_path / "campaign"
    r = run("simulate", "--out", str(data), "--users", "20000", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert (data / "exposures").is_dir() and (data / "creatives.csv").exists() and (data / "truth.json").exists()
    r = run("simulate", "--out", str(data), "--users", "100")
    assert r.returncode == 2 and str(data) in r.stderr

    raw = demo_config(str(data), str(tmp_path / "model"))
    raw["mlflow"] = {"enabled": False}
    cfg = write_config(tmp_path / "fit.yaml", raw)
    r = run("fit", cfg, "--set", "model.lambda=0.01", "--set", "model.alpha=0.1")
    assert r.returncode == 0, r.stderr
    assert "fused/n_j" in r.stdout and "seg1" in r.stdout
    model = json.loads((tmp_path / "model" / "model.json").read_text())
    assert model["lambda"] == 0.01 and model["alpha"] == 0.1
    assert model["features"][0] == "intercept"
    assert model["fit"]["converged"] and model["fit"]["optimality_residual"] <= 1e-6
    assert model["data"]["rows"] == 20000 and model["data"]["users"] == 20000
    for c in model["creatives"]:
        assert c["fused"] == (c["distance"] == 0.0)
        seg = next(s for s in model["segments"] if s["name"] == c["segment"])
        if c["fused"]:
            assert c["beta"] == seg["gamma"]

    out = tmp_path / "assignments"
    r = run("assign", "--model", str(tmp_path / "model"), "--input", str(data / "exposures"), "--output", str(out))
    assert r.returncode == 0, r.stderr
    got = pd.read_parquet(out)
    assert list(got.columns) == ["user_id", "segment", "score_seg1", "score_seg2", "score_seg3", "score_seg4"]
    assert len(got) == 20000 and set(got["segment"]) <= {"seg1", "seg2", "seg3", "seg4"}

    # bad data: a misspelled covariate -> exit 2, message names it, nothing written
    raw["data"]["covariates"] = ["x1", "x2", "x3", "x4", "x6"]
    raw["output"]["model_dir"] = str(tmp_path / "model2")
    r = run("fit", write_config(tmp_path / "bad.yaml", raw), "--set", "model.lambda=0.01", "--set", "model.alpha=0.1")
    assert r.returncode == 2 and "x6" in r.stderr
    assert not (tmp_path / "model2").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".model2")]


def _catches(pid: int, sig: int) -> bool:
    """True once process ``pid`` has installed a handler for ``sig`` (SigCgt in /proc)."""
    with open(f"/proc/{pid}/status") as fh:
        caught = next(ln.split()[1] for ln in fh if ln.startswith("SigCgt:"))
    return bool(int(caught, 16) >> (sig - 1) & 1)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads SigCgt from /proc")
def test_sigusr1_prints_every_threads_stack_and_the_run_goes_on(tmp_path):
    import signal
    import time

    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    proc = subprocess.Popen([*SEGMENT, "simulate", "--out", str(tmp_path / "sim"), "--users", "300000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not _catches(proc.pid, signal.SIGUSR1):
        assert proc.poll() is None and time.monotonic() < deadline, "the CLI never installed its handler"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGUSR1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "(most recent call first)" in err and "segmentation/cli.py" in err
    assert os.path.exists(tmp_path / "sim" / "exposures")
