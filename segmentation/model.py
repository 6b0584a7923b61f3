"""The fitted segmentation model and its plain-JSON form (``model.json``).

Coefficients are reported on the original covariate scale (``gamma``, ``beta``); the fitting
scale (standardised covariates when ``standardize: true``) is kept too, because the penalty,
the fusion distances ||beta_jk - gamma_j|| and lambda live there. Fusion is a property of the
fit, not of a tolerance: ``fused`` is true exactly when delta_jk = beta_jk - gamma_j is the
zero vector, which the proximal solver produces exactly. A linear change of scale maps equal
vectors to equal vectors, so fusion holds on both scales.

Users are assigned to ``argmax_j gamma_j . x`` over the assignable segments (a control arm is
never assigned).

A cross-validated model may be *relaxed* (``selection/relax.py``): its coefficients are then
g * penalised + (1 - g) * refit on the penalised fit's pattern, with g = ``relax`` chosen by the
CV (1: the penalised fit itself). The penalised fit is kept beside it (``penalized``, the same
keys as the main coefficients) and ``with_fit("penalized")`` gives that model; ``assign`` uses
the main (relaxed) coefficients unless asked otherwise.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT_VERSION = 1


@dataclass
class SegmentationModel:
    features: list[str]                       # coefficient order; "intercept" first
    segments: list[str]
    creatives: list[str]
    segment_of: list[int]                     # creative -> segment index
    gamma: np.ndarray                         # (m, p) original scale
    beta: np.ndarray                          # (K, p) original scale
    gamma_fit: np.ndarray                     # (m, p) fitting scale
    beta_fit: np.ndarray                      # (K, p) fitting scale
    fused: np.ndarray                         # (K,) bool, delta exactly zero
    lam: float
    alpha: float
    encoding: dict[str, Any]                  # segmentation.data.encode.Encoding.to_dict()
    control: str | None = None
    fit: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    segment_shares: dict[str, float] | None = None
    relax: float = 1.0                        # g of the relaxed blend (1: the penalised fit)
    penalized: dict[str, np.ndarray] | None = None  # the penalised fit when relax < 1
    evidence: dict[str, Any] | None = None    # out-of-fold calibration and fusion tests

    FITS = ("relaxed", "penalized")

    def with_fit(self, which: str = "relaxed") -> "SegmentationModel":
        """This model with the coefficients of ``which``: "relaxed" (the chosen model, the
        default) or "penalized" (the penalised fit at the chosen (lambda, alpha); the same
        model when no relaxation was chosen)."""
        if which not in self.FITS:
            raise ValueError(f"fit must be one of {self.FITS}, got {which!r}")
        if which == "relaxed" or self.penalized is None:
            return self
        from dataclasses import replace

        pen = self.penalized
        return replace(self, gamma=pen["gamma"], beta=pen["beta"], gamma_fit=pen["gamma_fit"],
                       beta_fit=pen["beta_fit"], fused=pen["fused"], relax=1.0, penalized=None)

    # ---- derived -------------------------------------------------------------------------
    @property
    def assignable(self) -> list[int]:
        """Segment indices users may be assigned to (all but a control arm's)."""
        ctrl = self.control_segment
        return [j for j in range(len(self.segments)) if j != ctrl]

    @property
    def control_segment(self) -> int | None:
        if self.control is None:
            return None
        return self.segment_of[self.creatives.index(self.control)]

    def distances(self) -> np.ndarray:
        """(K,) ||beta_jk - gamma_j||_2 on the fitting scale (the penalised quantity)."""
        return np.linalg.norm(self.beta_fit - self.gamma_fit[self.segment_of], axis=1)

    def nonzero_covariates(self, j: int) -> list[str]:
        return [f for f, g in zip(self.features[1:], self.gamma_fit[j, 1:]) if g != 0.0]

    def design(self, frame) -> np.ndarray:
        """(n, p) fitting-scale design z(x) of a pandas frame of covariates (intercept included)."""
        from segmentation.data.encode import Encoding

        return Encoding.from_dict(self.encoding).transform_numpy(frame)

    def segment_scores(self, frame) -> np.ndarray:
        """(n, m_assignable) scores gamma_j . x (= gamma_fit_j . z(x)) of a pandas frame."""
        return self.design(frame) @ self.gamma_fit[self.assignable].T

    def assign(self, frame) -> np.ndarray:
        """Index into ``self.segments`` of argmax_j gamma_j . x (first maximum on ties)."""
        return np.asarray(self.assignable)[np.argmax(self.segment_scores(frame), axis=1)]

    # ---- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        dist = self.distances()
        seg_entries = []
        for j, name in enumerate(self.segments):
            members = [c for c in range(len(self.creatives)) if self.segment_of[c] == j]
            seg_entries.append({
                "name": name,
                "gamma": _floats(self.gamma[j]),
                "gamma_fit": _floats(self.gamma_fit[j]),
                "creatives": [self.creatives[c] for c in members],
                "n_creatives": len(members),
                "n_fused": int(sum(bool(self.fused[c]) for c in members)),
                "nonzero_covariates": self.nonzero_covariates(j),
                "is_control": j == self.control_segment,
                "share_users": None if self.segment_shares is None else self.segment_shares.get(name),
            })
        cr_entries = [{
            "name": name,
            "segment": self.segments[self.segment_of[c]],
            "beta": _floats(self.beta[c]),
            "beta_fit": _floats(self.beta_fit[c]),
            "fused": bool(self.fused[c]),
            "distance": float(dist[c]),
        } for c, name in enumerate(self.creatives)]
        return {
            "format_version": FORMAT_VERSION,
            "features": list(self.features),
            "lambda": float(self.lam),
            "alpha": float(self.alpha),
            "control": self.control,
            "segments": seg_entries,
            "creatives": cr_entries,
            "encoding": self.encoding,
            "fit": self.fit,
            "data": self.data,
            "selection": self.selection,
            "relax": float(self.relax),
            "penalized": None if self.penalized is None else {
                "gamma": [_floats(g) for g in self.penalized["gamma"]],
                "beta": [_floats(b) for b in self.penalized["beta"]],
                "gamma_fit": [_floats(g) for g in self.penalized["gamma_fit"]],
                "beta_fit": [_floats(b) for b in self.penalized["beta_fit"]],
                "fused": [bool(x) for x in self.penalized["fused"]],
            },
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SegmentationModel":
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"model.json format_version {d.get('format_version')!r} is not {FORMAT_VERSION}")
        segments = [s["name"] for s in d["segments"]]
        creatives = [c["name"] for c in d["creatives"]]
        return cls(
            features=list(d["features"]),
            segments=segments,
            creatives=creatives,
            segment_of=[segments.index(c["segment"]) for c in d["creatives"]],
            gamma=np.array([s["gamma"] for s in d["segments"]], dtype=float),
            beta=np.array([c["beta"] for c in d["creatives"]], dtype=float),
            gamma_fit=np.array([s["gamma_fit"] for s in d["segments"]], dtype=float),
            beta_fit=np.array([c["beta_fit"] for c in d["creatives"]], dtype=float),
            fused=np.array([c["fused"] for c in d["creatives"]], dtype=bool),
            lam=float(d["lambda"]),
            alpha=float(d["alpha"]),
            encoding=d["encoding"],
            control=d.get("control"),
            fit=d.get("fit", {}),
            data=d.get("data", {}),
            selection=d.get("selection"),
            segment_shares={s["name"]: s["share_users"] for s in d["segments"]
                            if s.get("share_users") is not None} or None,
            relax=float(d.get("relax", 1.0)),
            penalized=None if not d.get("penalized") else {
                k: np.array(v, dtype=bool if k == "fused" else float) for k, v in d["penalized"].items()},
            evidence=d.get("evidence"),
        )

    def save(self, model_dir: str) -> str:
        """Write ``model_dir/model.json`` atomically; returns its path."""
        os.makedirs(model_dir, exist_ok=True)
        path = os.path.join(model_dir, "model.json")
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, model_dir_or_file: str) -> "SegmentationModel":
        path = model_dir_or_file
        if os.path.isdir(path):
            path = os.path.join(path, "model.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no model.json at {model_dir_or_file}")
        from segmentation.errors import ModelFileError

        try:
            with open(path, encoding="utf-8") as fh:
                d = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelFileError(f"{os.path.abspath(path)} is not valid JSON ({e}); the file is "
                                 "truncated or corrupt: refit, or restore the model directory") from None
        try:
            if not isinstance(d, dict):
                raise TypeError(f"a JSON {type(d).__name__}, not an object")
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            raise ModelFileError(f"{os.path.abspath(path)} is not a segmentation model ({what})") from None


def _floats(a) -> list[float]:
    return [float(x) for x in np.asarray(a).ravel()]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str, payload: Any) -> None:
    """Write JSON to a temp file in the same directory, then rename over ``path``."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, allow_nan=False)
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
