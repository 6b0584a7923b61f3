"""What dead runs leave behind is swept by the next run, never what a live run still uses.

Owners are real processes: a ``sleep`` started here is the live owner, the same kind of process
killed by pid (and reaped) is the dead one. No mocks of liveness.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from segmentation.data.blockstore import BLOCK_DIR_PREFIX, default_block_dir, sweep_block_dirs
from segmentation.ownership import (ModelDirLock, RunConflictError, owner_record, owner_state, read_owner,
                                    recover_model_dir, sweep_orphans, write_owner)


@pytest.fixture
def sleeper():
    """A live process (``sleep 300``), stopped by pid at the end."""
    p = subprocess.Popen(["sleep", "300"])
    yield p
    p.kill()
    p.wait()


def dead_record(age: float = 3600.0) -> dict:
    """The owner record of a process that existed and is gone (killed by pid, reaped)."""
    p = subprocess.Popen(["sleep", "300"])
    rec = owner_record(p.pid)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    rec["created"] = time.time() - age
    return rec


def version_dir(root, name: str, record: dict | None) -> str:
    d = os.path.join(str(root), name)
    os.makedirs(d)
    with open(os.path.join(d, "X.npy"), "wb") as fh:
        fh.write(b"block bytes")
    if record is not None:
        write_owner(d, record)
    return d


def test_owner_states_of_real_processes(sleeper):
    assert owner_state(owner_record()) == "alive"
    live = owner_record(sleeper.pid)
    assert live["proc_start"] is not None and owner_state(live) == "alive"
    assert owner_state(dead_record()) == "dead"
    # the live pid with another start time is another process: the owner is dead
    assert owner_state(dict(live, proc_start=live["proc_start"] - 1)) == "dead"
    assert owner_state(dict(live, host=socket.gethostname() + "-elsewhere")) == "unknown"


def test_sweep_removes_dead_owners_dirs_only(tmp_path, sleeper):
    root = tmp_path / "blocks"
    old = time.time() - 3600
    dead = version_dir(root, "a" * 32, dead_record())
    dead_tmp = version_dir(root, ".tmp-" + "b" * 32, dead_record())
    live = version_dir(root, "c" * 32, dict(owner_record(sleeper.pid), created=old))
    mine = version_dir(root, "d" * 32, dict(owner_record(), created=old))
    young = version_dir(root, "e" * 32, dead_record(age=5.0))
    remote = version_dir(root, "f" * 32, dict(dead_record(), host="another-host"))
    unowned = version_dir(root, "0" * 32, None)
    other = version_dir(root, "not-a-version", dead_record())

    removed = sweep_block_dirs(str(root), grace_seconds=60)
    assert sorted(removed) == sorted([dead, dead_tmp])
    for d in (live, mine, young, remote, unowned, other):
        assert os.path.isdir(d), d
    assert read_owner(live)["pid"] == sleeper.pid
    # the grace period is the only thing keeping the young one: without it, it goes too
    assert sweep_block_dirs(str(root), grace_seconds=0) == [young]
    # once its owner dies, the live one goes as well
    sleeper.kill()
    sleeper.wait()
    assert sweep_block_dirs(str(root), grace_seconds=60) == [live]


def test_default_block_dirs_carry_their_owner_and_are_swept_when_it_dies(tmp_path):
    d = default_block_dir(needed_bytes=0)
    try:
        assert os.path.basename(d).startswith(BLOCK_DIR_PREFIX)
        assert read_owner(d)["pid"] == os.getpid()
        assert d not in sweep_block_dirs(None, grace_seconds=0)          # ours: alive
        write_owner(d, dead_record())
        assert d in sweep_block_dirs(None, grace_seconds=0)
        assert not os.path.exists(d)
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


LOCK_HOLDER = """
import sys, time
from segmentation.ownership import ModelDirLock
lock = ModelDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(300)
"""


def test_model_lock_is_held_by_a_live_process_and_dropped_when_it_is_killed(tmp_path):
    model_dir = str(tmp_path / "model")
    p = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, model_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(RunConflictError) as err:
            ModelDirLock(model_dir).acquire()
        msg = str(err.value)
        assert f"pid {p.pid}" in msg and model_dir in msg and "\n" not in msg
        assert err.value.exit_code == 5
        os.kill(p.pid, signal.SIGKILL)                 # the kernel drops its flock
        p.wait()
        assert os.path.exists(tmp_path / ".model.lock")   # the killed holder's file, not its lock
        with ModelDirLock(model_dir) as lock:
            assert json.loads(open(lock.path).read())["pid"] == os.getpid()
        assert not os.path.exists(lock.path)              # removed by a holder that ends
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_recover_model_dir_removes_staging_and_restores_an_interrupted_publish(tmp_path):
    model_dir = tmp_path / "model"
    stage = tmp_path / ".model.tmp-abc123"
    stage.mkdir()
    (stage / "model.json").write_text("{half")
    old = tmp_path / "model.old-4242"                   # publish killed between its two renames
    old.mkdir()
    (old / "model.json").write_text("{}")
    done = recover_model_dir(str(model_dir))
    assert sorted(done) == sorted([str(stage), str(old)])
    assert not stage.exists() and not old.exists()
    assert (model_dir / "model.json").read_text() == "{}"   # the previous model is back
    # with the model in place, a leftover .old copy is just removed
    old.mkdir()
    assert recover_model_dir(str(model_dir)) == [str(old)] and not old.exists()
    assert (model_dir / "model.json").exists()


def test_sweep_of_an_unreadable_root_is_a_no_op(tmp_path):
    assert sweep_orphans(str(tmp_path / "missing"), lambda n: True) == []
