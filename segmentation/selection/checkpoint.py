"""Checkpoints of a cross-validated path: what a killed run needs to resume at the next lambda.

A checkpoint is a directory of *stage files*, each written atomically (temp file + rename) once
its stage is complete, so a kill at any moment leaves only whole stages behind:

* ``null.npz``: the null fits of every alpha, lambda_max, alphas dropped so far and the adaptive
  penalty factors (everything before the grid);
* ``step-00007.npz``: lambda index 7 of every alpha still on its path: the full-data fit and the
  F fold fits (they are the warm starts of index 8), the step's pass count and warnings, the
  paths stopped so far and every held-out metric matched so far. The fits carry their
  lazy-curvature Hessians (full mode, K p^2 doubles each) while they are the latest warm starts;
  the step before is re-saved without the ones that have served;
* ``path.npz``: the held-out metrics of the last index (the final held-out pass);
* ``relax.npz``: the relaxed refits and the scores of their blends.

``state.json`` holds the fingerprint the stages belong to and the attempts that wrote them.
A run continues from the longest run of consecutive steps; because the solver's iterates depend
only on the warm start (``Problem.warm_start``: the FitResult with its coefficients and, in
diagonal mode, its last oracle answer and Anderson secants, in full mode the Hessians lazy
curvature carries, every field stored bit for bit) and
the held-out metrics of index k are matched bitwise in the first pass of index k + 1 exactly as
in an uninterrupted run, the resumed path computes the same numbers.

Stage files are ``.npz`` archives read with ``allow_pickle=False``: arrays as arrays, the rest as
one JSON document (dataclasses of a fixed list, tuple keys, nan and inf kept); nothing in a
checkpoint can execute code when loaded.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import time

import numpy as np

STATE_FILE = "state.json"
FORMAT = 1


def _types() -> dict:
    from segmentation.selection.cv import PathPoint
    from segmentation.selection.relax import RelaxResult, ScoredPoint
    from segmentation.solver.penalty import PenaltyWeights
    from segmentation.solver.prox_newton import FitResult

    return {c.__name__: c for c in (FitResult, PenaltyWeights, PathPoint, ScoredPoint, RelaxResult)}


def _pack(obj, arrays: dict):
    """JSON-able form of ``obj``; arrays go to ``arrays`` under a generated key."""
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__nd__": key}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        if name not in _types():
            raise TypeError(f"cannot checkpoint a {name}")
        return {"__dc__": name, "f": {f.name: _pack(getattr(obj, f.name), arrays)
                                      for f in dataclasses.fields(obj) if f.init}}
    if isinstance(obj, dict):
        return {"__map__": [[_pack(k, arrays), _pack(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, arrays) for v in obj]
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def _unpack(obj, arrays):
    if isinstance(obj, list):
        return [_unpack(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__nd__" in obj:
            return arrays[obj["__nd__"]]
        if "__tuple__" in obj:
            return tuple(_unpack(v, arrays) for v in obj["__tuple__"])
        if "__map__" in obj:
            return {_unpack(k, arrays): _unpack(v, arrays) for k, v in obj["__map__"]}
        if "__dc__" in obj:
            cls = _types()[obj["__dc__"]]
            return cls(**{k: _unpack(v, arrays) for k, v in obj["f"].items()})
    return obj


def dumps(obj) -> bytes:
    """``obj`` as the bytes of one ``.npz`` (see the module docstring)."""
    arrays: dict = {}
    doc = json.dumps(_pack(obj, arrays))
    buf = io.BytesIO()
    np.savez(buf, __doc__=np.array(doc), **arrays)
    return buf.getvalue()


def loads(data: bytes):
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__doc__"}
        doc = json.loads(str(z["__doc__"]))
    return _unpack(doc, arrays)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class PathCheckpoint:
    """The stages of one fit's path under ``directory`` for one ``fingerprint``.

    ``open`` (a class method) keeps the stages of a previous attempt with the same fingerprint
    (``resume=True``) or starts empty (a different fingerprint, a damaged state, ``resume=False``).
    ``previous`` is then the attempt record the stages came from (None on a fresh start);
    ``abandoned`` the attempts of a checkpoint that was dropped instead.
    """

    def __init__(self, directory: str, fingerprint: str, state: dict, previous: dict | None):
        self.directory = directory
        self.fingerprint = fingerprint
        self.state = state
        self.previous = previous
        self.restored: list[str] = []          # stages read back by this run

    @classmethod
    def open(cls, directory: str, fingerprint: str, *, resume: bool = True,
             attempt: dict | None = None) -> "PathCheckpoint":
        state = None
        try:
            with open(os.path.join(directory, STATE_FILE)) as fh:
                state = json.load(fh)
        except (OSError, ValueError):
            state = None
        why, abandoned = None, []
        if state is not None and not resume:
            why = "a fresh start was asked for"
        elif state is not None and (state.get("fingerprint") != fingerprint or state.get("format") != FORMAT):
            why = "its config, input data or code differ"
        if why is not None:
            abandoned = list(state.get("attempts") or [])
            state = None
        previous = None
        if state is None:
            if os.path.isdir(directory):
                shutil.rmtree(directory)
            os.makedirs(directory)
            state = {"format": FORMAT, "fingerprint": fingerprint, "attempts": [],
                     "created": time.time()}
        else:
            previous = state["attempts"][-1] if state.get("attempts") else {}
        me = dict(attempt or {})
        me.setdefault("started", time.time())
        me["attempt"] = len(state["attempts"]) + 1
        state["attempts"].append(me)
        ck = cls(directory, fingerprint, state, previous)
        ck.discarded = why               # why an earlier attempt's stages were dropped (or None)
        ck.abandoned = abandoned         # the attempts whose stages were dropped
        ck._save_state()
        return ck

    def _save_state(self) -> None:
        _write_atomic(os.path.join(self.directory, STATE_FILE),
                      json.dumps(self.state, indent=1).encode())

    @property
    def attempt(self) -> int:
        return int(self.state["attempts"][-1]["attempt"])

    def _path(self, stage: str) -> str:
        return os.path.join(self.directory, f"{stage}.npz")

    def save(self, stage: str, obj) -> None:
        """Write one complete stage (atomically)."""
        _write_atomic(self._path(stage), dumps(obj))

    def load(self, stage: str):
        """A stage written by this or an earlier attempt, or None."""
        try:
            with open(self._path(stage), "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        obj = loads(data)
        self.restored.append(stage)
        return obj

    def has(self, stage: str) -> bool:
        return os.path.exists(self._path(stage))

    @staticmethod
    def step_name(k: int) -> str:
        return f"step-{k:05d}"

    def steps_done(self) -> int:
        """How many consecutive lambda indices (from 0) are checkpointed."""
        k = 0
        while self.has(self.step_name(k)):
            k += 1
        return k

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
