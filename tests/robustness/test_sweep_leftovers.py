"""What a killed run leaves that no rerun of its own would tidy is removed by the next fit
(``ownership.sweep_leftovers``): staging directories of any output beside the model directory,
the temp directories of the package shipped to executors, and stale resume checkpoints of other
model directories. Never while the owner lives.

The owner is a real process that makes these with the package's own functions
(``atomic.staging_dir``, ``spark_session.package_archive``, ``resume``'s checkpoint) and then
sleeps; "dead" is that process killed by SIGKILL (by pid) and reaped.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from segmentation.config import SegmentConfig
from segmentation.ownership import ModelDirLock, sweep_leftovers
from segmentation.resume import checkpoint_dir, sweep_checkpoints
from segmentation.workflow import demo_config

OWNER = r"""
import json, os, sys, time
from segmentation.ownership import ModelDirLock, owner_record
from segmentation.atomic import staging_dir
from segmentation.resume import checkpoint_dir
from segmentation.selection.checkpoint import PathCheckpoint
from segmentation.spark_session import package_archive

model_dir, hold_lock = sys.argv[1], sys.argv[2] == "lock"
lock = ModelDirLock(model_dir).acquire() if hold_lock else None
ck = PathCheckpoint.open(checkpoint_dir(model_dir), "f" * 64, attempt=owner_record())
ck.save(PathCheckpoint.step_name(0), {"lambda": 0.5})
made = {"staging": staging_dir(model_dir), "package": os.path.dirname(package_archive()),
        "checkpoint": ck.directory}
print(json.dumps(made), flush=True)
time.sleep(600)
"""


class Owner:
    """A process holding a staging dir, a package temp dir and a checkpoint of ``model_dir``."""

    def __init__(self, model_dir: str, tmpdir: str, hold_lock: bool = False):
        env = dict(os.environ, TMPDIR=tmpdir)
        self.proc = subprocess.Popen([sys.executable, "-c", OWNER, model_dir, "lock" if hold_lock else "-"],
                                     stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        assert line, f"owner process ended (exit {self.proc.wait()})"
        self.made = json.loads(line)

    def paths(self) -> list[str]:
        return sorted(self.made.values())

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def owners():
    started: list[Owner] = []
    yield started
    for o in started:
        if o.proc.poll() is None:
            o.kill()


@pytest.fixture
def tmpdir_for_packages(tmp_path, monkeypatch):
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))      # where package_archive and the sweep look
    return str(d)


@pytest.fixture
def dead_a(tmp_path, tmpdir_for_packages, owners) -> Owner:
    """The leftovers of models/a (staging, package dir, checkpoint), their owner killed."""
    o = Owner(str(tmp_path / "models" / "a"), tmpdir_for_packages)
    owners.append(o)
    o.kill()
    return o


def config(model_dir: str, *, grace: float = 0.0, max_age_hours: float = 0.0) -> SegmentConfig:
    raw = demo_config("/no/data", model_dir)
    raw.pop("segments_file")
    raw["segments"] = {"s1": ["c1", "c2"]}
    raw["data"]["orphan_grace_seconds"] = grace
    raw["output"]["checkpoint_max_age_hours"] = max_age_hours
    return SegmentConfig.model_validate(raw)


def test_a_live_owners_leftovers_survive_a_dead_ones_go(tmp_path, tmpdir_for_packages, owners):
    models = tmp_path / "models"
    live = Owner(str(models / "ds=2024-01-01"), tmpdir_for_packages)
    dead = Owner(str(models / "ds=2024-01-02"), tmpdir_for_packages)
    owners += [live, dead]
    for p in live.paths() + dead.paths():
        assert os.path.isdir(p), p
    assert os.path.basename(live.made["package"]).startswith("segmentation-pkg-")
    assert os.path.basename(live.made["staging"]).startswith(".ds=2024-01-01.tmp-")
    cfg = config(str(models / "ds=2024-01-03"))
    # both owners alive: nothing is touched, whatever the grace period and age limit say
    assert sweep_leftovers(cfg) == []
    dead.kill()
    removed = sweep_leftovers(cfg)
    assert sorted(removed) == dead.paths()
    for p in live.paths():
        assert os.path.isdir(p), p
    for p in dead.paths():
        assert not os.path.exists(p), p
    # the staging dir's owner record does not reach the published model
    assert os.path.exists(os.path.join(live.made["staging"], "owner.json"))
    # no lock files left beside the models by the checkpoint sweep's locking
    assert not [n for n in os.listdir(models) if n.endswith(".lock")]
    live.kill()
    assert sorted(sweep_leftovers(cfg)) == live.paths()


def test_grace_period_and_age_limit_keep_a_dead_runs_checkpoint(tmp_path, dead_a):
    models = tmp_path / "models"
    ck = dead_a.made["checkpoint"]
    # young (grace period) or within the age limit: kept, for a retry to resume
    assert sweep_leftovers(config(str(models / "b"), grace=3600.0)) == []
    assert sweep_checkpoints(str(models / "b"), max_age_seconds=3600.0, grace_seconds=0.0) == []
    assert os.path.isdir(ck)
    # the run's own model directory never sweeps its own checkpoint (it resumes it)
    assert sweep_checkpoints(str(models / "a"), max_age_seconds=0.0, grace_seconds=0.0) == []
    # past the age limit (seen from an hour later): gone
    assert sweep_checkpoints(str(models / "b"), max_age_seconds=3600.0, grace_seconds=0.0,
                             now=time.time() + 3601.0) == [ck]


def test_a_checkpoint_goes_once_its_model_was_published_after_it(tmp_path, dead_a):
    models = tmp_path / "models"
    ck = dead_a.made["checkpoint"]
    os.makedirs(models / "a")
    time.sleep(0.05)
    (models / "a" / "model.json").write_text("{}")
    assert sweep_checkpoints(str(models / "b"), max_age_seconds=1e9, grace_seconds=0.0) == [ck]


def test_a_checkpoint_whose_model_dir_is_locked_is_kept(tmp_path, tmpdir_for_packages, owners, dead_a):
    """A run about to resume a dead attempt's checkpoint holds the model lock before it reads
    the checkpoint: the sweep of another run skips it even though its recorded owner is dead."""
    models = tmp_path / "models"
    dead = dead_a
    retry = Owner(str(models / "other"), tmpdir_for_packages, hold_lock=True)
    owners.append(retry)
    with ModelDirLock(str(models / "a")):
        assert sweep_checkpoints(str(models / "b"), max_age_seconds=0.0, grace_seconds=0.0) == []
    assert os.path.isdir(dead.made["checkpoint"])
    # the live owner holding its lock: its checkpoint is kept too (and its lock stays)
    assert os.path.isdir(retry.made["checkpoint"])
    assert os.path.exists(models / ".other.lock")


HOLD = r"""
import sys, time
from segmentation.ownership import ModelDirLock
lock = ModelDirLock(sys.argv[1], purpose=sys.argv[2]).acquire()
print("held", flush=True)
time.sleep(float(sys.argv[3]))
lock.release()
"""


def _holder(model_dir: str, purpose: str, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, model_dir, purpose, repr(seconds)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_fit_waits_out_another_runs_sweep_but_not_another_fit(tmp_path):
    """A sweep holds a model directory's lock for a moment (``sweep_checkpoints``): a fit
    starting then waits for it; a sweep meeting a fit's (or a sweep's) lock gives up at once."""
    from segmentation.ownership import RunConflictError

    model_dir = str(tmp_path / "m")
    sweep = _holder(model_dir, "sweep", 1.5)
    try:
        t0 = time.monotonic()
        with pytest.raises(RunConflictError):
            ModelDirLock(model_dir, purpose="sweep").acquire()
        assert time.monotonic() - t0 < 1.0
        with ModelDirLock(model_dir):
            waited = time.monotonic() - t0
            assert sweep.poll() is not None or waited >= 1.0
        assert waited >= 1.0
    finally:
        sweep.kill()
        sweep.wait()
    fit = _holder(model_dir, "fit", 60)
    try:
        t0 = time.monotonic()
        with pytest.raises(RunConflictError, match=f"pid {fit.pid}"):
            ModelDirLock(model_dir).acquire()
        assert time.monotonic() - t0 < 1.0
    finally:
        fit.kill()
        fit.wait()


@pytest.mark.slow
def test_the_next_fit_removes_what_a_sigkilled_fit_left(small_campaign, tmp_path, owners):
    """``segment fit`` into models/a killed by SIGKILL after one checkpointed lambda, and a
    killed process that had staged models/b and built the package archive; a live one holding
    the same for models/c. The next ``segment fit`` (into models/d, a single fit, checkpoint
    age limit 0, no grace period) removes a's checkpoint and block directory and the dead
    process's staging and package directories, and leaves every directory of the live one."""
    import yaml

    from fit_processes import fit_config, kill_after_steps, run_fit_cli

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    models = tmp_path / "models"
    a = str(models / "a")
    state = kill_after_steps(fit_config(tmp_path, small_campaign, a, name="a"), a, 1, env=env)
    assert os.path.isdir(checkpoint_dir(a)) and state["attempts"][-1]["pid"] > 0
    blocks = tmp_path / "blocks"
    assert os.listdir(blocks)                                  # the killed run's block directory
    dead = Owner(str(models / "b"), str(tmp))
    live = Owner(str(models / "c"), str(tmp))
    owners += [dead, live]
    dead.kill()

    cfg_d = fit_config(tmp_path, small_campaign, str(models / "d"), name="d")
    raw = yaml.safe_load(open(cfg_d))
    raw["model"] = {"lambda": 0.01, "alpha": 0.1}
    raw["output"]["checkpoint_max_age_hours"] = 0
    with open(cfg_d, "w") as fh:
        yaml.safe_dump(raw, fh)
    res = run_fit_cli(cfg_d, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert os.path.exists(models / "d" / "model.json")
    assert not os.path.exists(checkpoint_dir(a))
    assert os.listdir(blocks) == []
    for p in dead.paths():
        assert not os.path.exists(p), p
    for p in live.paths():
        assert os.path.isdir(p), p
    assert sorted(os.listdir(models)) == sorted(
        ["d", os.path.basename(live.made["staging"]), os.path.basename(live.made["checkpoint"])])
    assert os.listdir(tmp) == [os.path.basename(live.made["package"])]


STAGER = r"""
import sys, time
from segmentation.atomic import staging_dir
print(staging_dir(sys.argv[1]), flush=True)
time.sleep(600)
"""


def _stager(final: str):
    proc = subprocess.Popen([sys.executable, "-c", STAGER, final], stdout=subprocess.PIPE, text=True)
    path = proc.stdout.readline().strip()
    assert path, f"stager ended (exit {proc.wait()})"
    return proc, path


def test_every_writer_sweeps_dead_staging_where_it_writes(spark, tmp_path, monkeypatch):
    """A Parquet output (``write_parquet_atomic``) and a run-date partition (``write_output``)
    stage under ``atomic.staging_dir`` with an owner record; a killed writer's staging beside
    them is removed by the next writer there, a live writer's is not, and none of the writers
    leaves its own."""
    from segmentation import ownership
    from segmentation.data.write import write_output
    from segmentation.policy.assign import write_parquet_atomic

    monkeypatch.setattr(ownership, "DEFAULT_GRACE_SECONDS", 0.0)
    out, daily = str(tmp_path / "assign"), str(tmp_path / "daily")
    procs = []
    try:
        dead_out = _stager(out)
        dead_day = _stager(os.path.join(daily, "run_date=2026-01-01"))
        live = _stager(out)
        procs = [dead_out[0], dead_day[0], live[0]]
        for proc in procs[:2]:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        write_parquet_atomic(spark.range(3), out)
        write_output(spark.range(2), daily, "parquet", run_date="2026-01-02")
        assert not os.path.exists(dead_out[1]) and not os.path.exists(dead_day[1])
        assert os.path.isdir(live[1])                                    # its owner lives
        assert sorted(os.listdir(tmp_path)) == sorted(["assign", "daily", os.path.basename(live[1])])
        assert os.listdir(daily) == ["run_date=2026-01-02"]
        assert spark.read.parquet(out).count() == 3
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.stdout.close()
