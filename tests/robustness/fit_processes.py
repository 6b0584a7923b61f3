"""Running ``segment fit`` as real subprocesses, killing them by pid, reading what they left."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import yaml

from segmentation.resume import checkpoint_dir
from segmentation.workflow import demo_config

SEGMENT = [sys.executable, "-m", "segmentation.cli"]


def fit_config(tmp, data_dir: str, model_dir: str, *, name: str = "fit", mlflow_db: str | None = None,
               blocks: str = "blocks", **model) -> str:
    """A small CV config (one alpha, 5 lambdas, 3 folds, block files under ``tmp/blocks`` with
    no grace period) written to ``tmp/<name>.yaml``."""
    raw = demo_config(data_dir, model_dir)
    raw["model"] = {"alpha": [0.1], "n_lambda": 5, "lambda_min_ratio": 0.05, **model}
    raw["cv"] = {"folds": 3, "seed": 0, "rule": "1se", "relax": [0.0, 0.5]}
    raw["data"]["block_dir"] = os.path.join(str(tmp), blocks)
    raw["data"]["orphan_grace_seconds"] = 0
    raw["mlflow"] = ({"tracking_uri": f"sqlite:///{mlflow_db}", "experiment": "robustness"}
                     if mlflow_db else {"enabled": False})
    raw["spark"] = {"master": "local[2]", "spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false"}
    path = os.path.join(str(tmp), f"{name}.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(raw, fh)
    return path


def _env(extra: dict | None = None):
    return dict(os.environ, PYSPARK_PYTHON=sys.executable, **(extra or {}))


def start_fit(config: str, *args, log_path: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """``segment fit CONFIG`` in its own process group (so whatever it starts can be found and
    stopped by the group's id); output to ``log_path`` (default: pipes); ``env`` adds variables."""
    if log_path:
        fh = open(log_path, "w")
        return subprocess.Popen([*SEGMENT, "fit", config, *args], stdout=fh, stderr=subprocess.STDOUT,
                                text=True, env=_env(env), start_new_session=True)
    return subprocess.Popen([*SEGMENT, "fit", config, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(env), start_new_session=True)


def run_fit_cli(config: str, *args, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SEGMENT, "fit", config, *args], capture_output=True, text=True,
                          env=_env(env), timeout=timeout)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the process group ``proc`` leads (its Spark JVM, workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_after_steps(config: str, model_dir: str, steps: int, *args, timeout: float = 1200,
                     log_path: str | None = None, env: dict | None = None) -> dict:
    """Start ``segment fit``, SIGKILL its driver (by pid) as soon as its checkpoint holds
    ``steps`` lambda indices; returns the checkpoint's state.json as the killed run left it."""
    ck = checkpoint_dir(model_dir)
    proc = start_fit(config, *args, log_path=log_path, env=env)
    want = os.path.join(ck, f"step-{steps - 1:05d}.npz")
    t0 = time.time()

    def reached() -> bool:
        """This process's attempt is in state.json and wrote (or read back) step ``steps``."""
        try:
            with open(os.path.join(ck, "state.json")) as fh:
                me = json.load(fh)["attempts"][-1]
            return me["pid"] == proc.pid and os.stat(want).st_mtime >= me["started"] - 1e-3
        except (OSError, ValueError, KeyError, IndexError):
            return False

    try:
        while not reached():
            if proc.poll() is not None:
                out = open(log_path).read() if log_path else proc.communicate()[0]
                raise AssertionError(f"fit ended (exit {proc.returncode}) before {steps} steps:\n{out}")
            if time.time() - t0 > timeout:
                raise AssertionError(f"no {want} after {timeout}s")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        stop_group(proc)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    with open(os.path.join(ck, "state.json")) as fh:
        state = json.load(fh)
    state["steps_on_disk"] = sum(1 for n in os.listdir(ck) if n.startswith("step-") and n.endswith(".npz"))
    assert state["steps_on_disk"] >= steps
    return state


def model_coefficients(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "model.json")) as fh:
        m = json.load(fh)
    out = {f"segment:{s['name']}": np.asarray(s["gamma"], float) for s in m["segments"]}
    out.update({f"creative:{c['name']}": np.asarray(c["beta"], float) for c in m["creatives"]})
    out["relax"] = np.asarray([m["relax"]])
    out["lambda"] = np.asarray([m["lambda"]])
    out["alpha"] = np.asarray([m["alpha"]])
    return out
