"""Who owns what a run leaves on disk: owner records, liveness, the orphan sweep, the model lock.

A run that is killed (SIGKILL, OOM killer, a pre-empted node) cannot clean up after itself; the
next run must, but never while the owner still lives. Every directory a run creates for its own
use carries an owner record (``OWNER_FILE``, JSON)::

    {"pid": 4242, "host": "node-1", "boot_id": "...", "proc_start": 1234567, "created": 1.7e9}

``proc_start`` is the process's start time in clock ticks since boot (``/proc/<pid>/stat``,
field 22) and ``boot_id`` the kernel's boot id: together with the pid they name one process,
so a pid reused after a reboot or by a later process is not mistaken for the owner. An owner is

* alive when it is on this host and a process with its pid and start time exists (off Linux,
  where ``/proc`` is missing, any process with the pid counts as the owner);
* dead when it is on this host and no such process exists;
* unknown when it is on another host (a shared ``block_dir``): its directory is left alone.

``sweep_orphans`` removes directories whose owner is dead *and* older than a grace period
(a directory whose owner record cannot be read is judged by nothing and left alone).

What is swept this way (``sweep_leftovers``, at the start of every fit): block directories
(``data/blockstore.py``), staging directories of any output beside the model directory
(``atomic.staging_dir``), the temp directories of the package shipped to executors
(``spark_session.package_archive``), and, judged by their state.json instead, resume
checkpoints of other model directories (``resume.sweep_checkpoints``).

``ModelDirLock`` is the model directory's lock: ``fcntl.flock`` on ``.<name>.lock`` beside the
model directory, held for the whole fit and removed at its end. The kernel drops a flock when
its process dies, so a killed run never leaves a stale lock (at most the file, which the next
run takes over); the owner record written into the file lets the loser name the winner.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import time

from segmentation.errors import SegmentationError

log = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
DEFAULT_GRACE_SECONDS = 600.0


class RunConflictError(SegmentationError):
    """Another live run holds the model directory this run would write; nothing was written
    (exit code 5)."""

    exit_code = 5


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), None if unknown/gone."""
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])           # field 22 of the whole line


def owner_record(pid: int | None = None) -> dict:
    """The owner record of process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else int(pid)
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(),
            "proc_start": process_start(pid), "created": time.time()}


def write_owner(directory: str, record: dict | None = None) -> str:
    """Write ``directory/owner.json`` atomically (temp file + rename); returns its path."""
    path = os.path.join(directory, OWNER_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(record or owner_record(), fh)
    os.replace(tmp, path)
    return path


def read_owner(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, OWNER_FILE)) as fh:
            rec = json.load(fh)
        return rec if isinstance(rec, dict) and "pid" in rec else None
    except (OSError, ValueError):
        return None


def owner_state(record: dict) -> str:
    """'alive', 'dead' or 'unknown' (another host): see the module docstring."""
    if record.get("host") != socket.gethostname():
        return "unknown"
    boot = _boot_id()
    if boot is not None and record.get("boot_id") not in (None, boot):
        return "dead"                          # recorded before the last reboot
    pid = int(record["pid"])
    if os.path.isdir("/proc/self"):
        start = process_start(pid)
        if start is None:
            return "dead"
        want = record.get("proc_start")
        return "alive" if want is None or int(want) == start else "dead"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "alive"
    return "alive"


def describe_owner(record: dict | None) -> str:
    if not record:
        return "an unknown process"
    started = record.get("created")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if started else "?"
    return f"pid {record.get('pid')} on {record.get('host')} (since {when})"


def sweep_orphans(root: str, pattern, grace_seconds: float = DEFAULT_GRACE_SECONDS,
                  *, now: float | None = None) -> list[str]:
    """Remove the directories under ``root`` accepted by ``pattern`` (a callable on the name)
    whose owner is dead and whose record is older than ``grace_seconds``; returns their paths.
    Never touches a directory of a live owner, of another host, or without an owner record."""
    removed: list[str] = []
    now = time.time() if now is None else now
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return removed
    for name in names:
        path = os.path.join(root, name)
        if not pattern(name) or not os.path.isdir(path) or os.path.islink(path):
            continue
        rec = read_owner(path)
        if rec is None:
            continue
        age = now - float(rec.get("created") or 0.0)
        if age < grace_seconds or owner_state(rec) != "dead":
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            log.info("removed %s left by a dead run (%s, %.0f s old)", path, describe_owner(rec), age)
            removed.append(path)
    return removed


def is_staging_name(name: str) -> bool:
    """``.<name>.tmp-*``: a directory ``atomic.staging_dir`` made beside an output."""
    return name.startswith(".") and ".tmp-" in name


def sweep_staging_dirs(parent: str, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> list[str]:
    """Staging directories (``atomic.staging_dir``) under ``parent`` left by dead runs: those
    of any output there, not only this run's (a killed run whose output is never written again,
    yesterday's partition of a daily job, would keep its staged copy forever). Judged by the
    owner record ``staging_dir`` puts in each (``sweep_orphans``): never a live run's."""
    return sweep_orphans(parent, is_staging_name, grace_seconds)


def sweep_leftovers(cfg) -> list[str]:
    """What killed runs left that no rerun of theirs would tidy, removed by a fit (under its
    model lock, before any work): staging directories beside ``output.model_dir``
    (``sweep_staging_dirs``), the temp directories of the package shipped to executors
    (``spark_session.sweep_package_dirs``), and stale resume checkpoints of the other model
    directories there (``resume.sweep_checkpoints``). Never anything of a live run; the grace
    period is ``data.orphan_grace_seconds``. Returns the removed paths."""
    from segmentation.resume import sweep_checkpoints
    from segmentation.spark_session import sweep_package_dirs

    grace = float(cfg.data.orphan_grace_seconds)
    parent = os.path.dirname(os.path.abspath(cfg.output.model_dir))
    removed = sweep_staging_dirs(parent, grace)
    removed += sweep_package_dirs(grace)
    removed += sweep_checkpoints(cfg.output.model_dir, float(cfg.output.checkpoint_max_age_hours) * 3600.0,
                                 grace)
    return removed


class ModelDirLock:
    """Exclusive lock of one model directory for the length of a fit (module docstring).

    ``with ModelDirLock(model_dir): ...``; raises ``RunConflictError`` naming the holder when
    another live process holds it for a fit.

    ``purpose="sweep"`` is another run's sweep (``resume.sweep_checkpoints``) holding the lock
    for a moment to judge a checkpoint: a sweep that finds the lock taken gives up at once,
    while a fit that finds it held by a sweep (or by a holder that has not written its record
    yet, or whose recorded owner is dead) waits for it, up to ``WAIT_SECONDS``, instead of
    failing as if another fit were writing.
    """

    WAIT_SECONDS = 30.0

    def __init__(self, model_dir: str, purpose: str = "fit"):
        final = os.path.abspath(model_dir)
        self.model_dir = final
        self.path = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.lock")
        self.purpose = purpose
        self._fd: int | None = None

    def _passing(self, holder) -> bool:
        """True when a holder of the lock will let go soon (see the class docstring)."""
        if self.purpose == "sweep":
            return False
        if not isinstance(holder, dict) or "pid" not in holder:
            return True
        return holder.get("purpose") == "sweep" or owner_state(holder) == "dead"

    def acquire(self) -> "ModelDirLock":
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        deadline = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = None
                try:
                    holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
                except (OSError, ValueError):
                    pass
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    if self._passing(holder):
                        deadline = deadline or time.monotonic() + self.WAIT_SECONDS
                        if time.monotonic() < deadline:
                            time.sleep(0.05)
                            continue
                    raise RunConflictError(
                        f"{self.model_dir} is being written by another run ({describe_owner(holder)}); "
                        "this run stops without writing anything") from None
                raise
            # the holder before us may have removed the file between our open and our flock:
            # then we hold a lock nobody else can see; start again on the file at the path
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dict(owner_record(), purpose=self.purpose)).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file while still holding it, then unlock (``acquire`` checks that
        the file it locked is still the one at the path). A killed holder leaves the file,
        but not the lock."""
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            finally:
                os.close(self._fd)             # closing drops the flock
                self._fd = None

    def __enter__(self) -> "ModelDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def beside(model_dir: str) -> tuple[str, str, list[str]]:
    """(parent directory, base name, sorted names in the parent) of ``model_dir``; no names
    when the parent cannot be listed (e.g. it does not exist yet)."""
    final = os.path.abspath(model_dir)
    parent = os.path.dirname(final)
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        names = []
    return parent, os.path.basename(final), names


def recover_model_dir(model_dir: str) -> list[str]:
    """Under the model lock: tidy what dead runs left beside ``model_dir``; returns the paths.

    Staging directories (``.<name>.tmp-*``, ``atomic.staging_dir``) are removed: with the
    lock held no live run can own one. A ``<name>.old-<pid>`` left by a publish killed between
    its two renames (``atomic.replace_dir``) is the previous complete model: it is put back when
    ``model_dir`` is missing, and removed otherwise.
    """
    final = os.path.abspath(model_dir)
    parent, base, names = beside(model_dir)
    done: list[str] = []
    for name in names:
        path = os.path.join(parent, name)
        if name.startswith(f".{base}.tmp-") and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed the staging directory %s of a dead run", path)
            done.append(path)
        elif name.startswith(f"{base}.old-") and os.path.isdir(path):
            if not os.path.exists(final):
                os.replace(path, final)
                log.warning("a publish was interrupted: restored the previous model %s from %s",
                            final, path)
            else:
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed %s left by an interrupted publish", path)
            done.append(path)
    return done
