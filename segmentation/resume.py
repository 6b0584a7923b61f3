"""Which checkpoint a fit may resume from: where it lives and the fingerprint it must match.

Where. ``.<model_dir name>.checkpoint/`` beside the model directory: on the same filesystem as
the output (so a retried task on another worker of the same storage finds it, it survives a
reboot and a wiped ``/dev/shm``, and its stage files are renamed into place atomically), found
from the config alone (unlike the per-attempt staging directories), and hidden next to the
model it will become. It is removed once the model is published.

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

import numpy as np

IGNORED_DATA_KEYS = ("store", "block_dir", "cache_storage_level", "worker_cache_mb",
                     "orphan_grace_seconds")


def checkpoint_dir(model_dir: str) -> str:
    final = os.path.abspath(model_dir)
    return os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.checkpoint")


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
