"""Which checkpoint a fit may resume from: where it lives and the fingerprint it must match.

Where. ``.<model_dir name>.checkpoint/`` beside the model directory: on the same filesystem as
the output (so a retried task on another worker of the same storage finds it, it survives a
reboot and a wiped ``/dev/shm``, and its stage files are renamed into place atomically), found
from the config alone (unlike the per-attempt staging directories), and hidden next to the
model it will become. It is removed once the model is published. The checkpoint of a run that
is never rerun (a killed attempt nobody retried, yesterday's partition of a daily job) is
removed by a later fit into the same parent directory (``sweep_checkpoints``) once its last
attempt is dead and either its model directory was published after it or nothing was written
to it for ``output.checkpoint_max_age_hours`` (default a week: a retry within that resumes).

What. A checkpoint is only resumed by a run whose fingerprint is identical; the fingerprint is
a SHA-256 of

* the config keys that decide the numbers: ``data`` (columns, covariates, source, format),
  the resolved segment mapping and control, ``model`` and ``cv`` (folds, seed, rule,
  relaxation). Keys that only move work around (``data.store``, ``data.block_dir``, cache
  sizes, the grace period), ``output``, ``mlflow``, ``spark`` and ``evaluate`` are left out;
* the input as files: every file under ``data.exposures`` when it is a local path, with its
  relative path, size and modification time (a rewrite with the same bytes still counts as a
  change: the cheap, conservative choice);
* the input as data: what ``prepare`` measured on it (rows, users, rows and positives per
  creative and per (fold, creative), the encoding's levels and moments rounded to 12
  significant digits), which also covers metastore tables and URIs no file listing reaches;
* the package version, so an upgrade between attempts starts afresh. (Not a hash of the source:
  an editable install being worked on would never resume; the same version with other code
  would continue a path whose every point still solves its own problem to tolerance.)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np

CHECKPOINT_SUFFIX = ".checkpoint"
IGNORED_DATA_KEYS = ("store", "block_dir", "cache_storage_level", "worker_cache_mb",
                     "orphan_grace_seconds")


def checkpoint_dir(model_dir: str) -> str:
    final = os.path.abspath(model_dir)
    return os.path.join(os.path.dirname(final), f".{os.path.basename(final)}{CHECKPOINT_SUFFIX}")


def config_part(cfg) -> dict:
    d = cfg.model_dump(mode="json", by_alias=True)
    data = {k: v for k, v in d["data"].items() if k not in IGNORED_DATA_KEYS}
    return {"data": data, "segments": cfg.segment_mapping(), "control": cfg.control,
            "model": d["model"], "cv": d["cv"]}


def files_part(path: str) -> list | str:
    """(relative path, size, mtime in ns) of every file under a local ``path``; the path itself
    when it is not a local file or directory (a table name, a remote URI)."""
    if path.startswith("file:"):
        path = path[5:]
    if os.path.isfile(path):
        st = os.stat(path)
        return [[os.path.basename(path), st.st_size, st.st_mtime_ns]]
    if not os.path.isdir(path):
        return path
    out = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            st = os.stat(full)
            out.append([os.path.relpath(full, path), st.st_size, st.st_mtime_ns])
    return out


def _rounded(obj):
    if isinstance(obj, float):
        return float(f"{obj:.12g}")
    if isinstance(obj, dict):
        return {str(k): _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _rounded(obj.tolist())
    if isinstance(obj, np.generic):
        return _rounded(obj.item())
    return obj


def data_part(prepared) -> dict:
    rep, man = prepared.report, prepared.manifest
    return _rounded({
        "rows": int(rep.n_rows), "users": int(rep.n_users),
        "rows_per_creative": dict(sorted(rep.rows_per_creative.items())),
        "positives_per_creative": dict(sorted(rep.positives_per_creative.items())),
        "counts": np.asarray(man.counts), "positives": np.asarray(man.positives),
        "folds": int(prepared.n_folds), "encoding": prepared.encoding.to_dict(),
    })


def fingerprint(cfg, prepared) -> tuple[str, dict]:
    """(hex digest, the document it digests) of a fit: see the module docstring."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("creative-segmentation")
    except PackageNotFoundError:
        ver = "unknown"
    doc = {"config": config_part(cfg), "files": files_part(cfg.data.exposures),
           "data": data_part(prepared), "code": {"version": ver}}
    blob = json.dumps(doc, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest(), doc


def _last_write(directory: str) -> float:
    """The newest modification time of ``directory`` and the files in it (a checkpoint is
    written one stage file at a time)."""
    newest = os.stat(directory).st_mtime
    with os.scandir(directory) as it:
        for entry in it:
            try:
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
            except OSError:
                pass
    return newest


def stale_reason(directory: str, model_dir: str, max_age_seconds: float, grace_seconds: float,
                 now: float) -> str | None:
    """Why the checkpoint ``directory`` of ``model_dir`` can go, or None to keep it.

    Kept while it was written less than ``grace_seconds`` ago or the last attempt recorded in
    its state.json is alive. Otherwise it goes when ``model_dir`` was published after the
    checkpoint's last write (that fit is done: a run that was killed after publishing, or a
    later fit into the same directory without a path) or when nothing was written to it for
    ``max_age_seconds`` (a failed run nobody retried). The caller holds ``model_dir``'s lock.
    """
    from segmentation.ownership import owner_state

    last = _last_write(directory)
    age = now - last
    if age < grace_seconds:
        return None
    try:
        with open(os.path.join(directory, "state.json")) as fh:
            attempts = json.load(fh).get("attempts") or []
    except (OSError, ValueError, AttributeError):
        attempts = []
    owner = attempts[-1] if attempts and isinstance(attempts[-1], dict) and "pid" in attempts[-1] else None
    if owner is not None and owner_state(owner) == "alive":
        return None
    try:
        published = os.stat(os.path.join(model_dir, "model.json")).st_mtime
    except OSError:
        published = None
    if published is not None and published > last:
        return "its model directory was written after it"
    if age >= max_age_seconds:
        return (f"nothing was written to it for {age / 3600:.1f} h "
                f"(output.checkpoint_max_age_hours = {max_age_seconds / 3600:g})")
    return None


def sweep_checkpoints(model_dir: str, max_age_seconds: float, grace_seconds: float, *,
                      now: float | None = None) -> list[str]:
    """Remove the stale checkpoints (``stale_reason``) of the *other* model directories beside
    ``model_dir``; returns their paths.

    This run's own checkpoint is not touched here (``open_checkpoint`` resumes or replaces it).
    Each other checkpoint is judged only under its model directory's lock
    (``ownership.ModelDirLock``, purpose "sweep": not waited for, and a fit starting meanwhile
    waits the moment out instead of failing): a run that is fitting into that directory, or
    about to resume its checkpoint, holds the lock, so its checkpoint is skipped.
    """
    import logging
    import time

    from segmentation.ownership import ModelDirLock, RunConflictError, beside

    log = logging.getLogger(__name__)
    parent, own, names = beside(model_dir)
    now = time.time() if now is None else now
    removed: list[str] = []
    for name in names:
        if not (name.startswith(".") and name.endswith(CHECKPOINT_SUFFIX)):
            continue
        target = name[1:-len(CHECKPOINT_SUFFIX)]
        path = os.path.join(parent, name)
        if not target or target == own or not os.path.isdir(path) or os.path.islink(path):
            continue
        try:
            lock = ModelDirLock(os.path.join(parent, target), purpose="sweep").acquire()
        except RunConflictError:
            continue                                  # a live run is writing that model
        try:
            why = stale_reason(path, os.path.join(parent, target), max_age_seconds,
                               grace_seconds, now)
            if why is not None:
                shutil.rmtree(path, ignore_errors=True)
                if not os.path.exists(path):
                    log.info("removed the checkpoint %s: %s", path, why)
                    removed.append(path)
        finally:
            lock.release()
    return removed


def open_checkpoint(cfg, prepared, *, resume: bool = True, run_id: str | None = None):
    """The ``PathCheckpoint`` of this fit (stages of an earlier attempt kept when its
    fingerprint matches and ``resume``), recording this attempt (pid, host, MLflow run)."""
    from segmentation.ownership import owner_record
    from segmentation.selection.checkpoint import PathCheckpoint

    digest, doc = fingerprint(cfg, prepared)
    attempt = dict(owner_record(), run_id=run_id)
    ck = PathCheckpoint.open(checkpoint_dir(cfg.output.model_dir), digest, resume=resume,
                             attempt=attempt)
    with open(os.path.join(ck.directory, "fingerprint.json"), "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True, default=str)
    return ck
