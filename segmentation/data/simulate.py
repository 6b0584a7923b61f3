"""Simulated campaigns with a known answer, for tests, demos and recovery benchmarks.

The generative model (all numpy, seeded; same seed and parameters -> same data and files):

- Users: numeric covariates ``x1..xd`` independent normals, ``x_i ~ N(mu_i, sd_i)`` with
  ``mu_i = 2 (i - 1)`` and ``sd_i = 1 + (i - 1) / 2`` (so standardisation matters), and a
  categorical ``region`` drawn with fixed probabilities (default north .4, south .3, east .2,
  west .1).
- Segments ``seg1..segm`` with ``segment_sizes`` creatives each (default 3, 3, 2, 2), creatives
  named ``cr01, cr02, ...`` in segment order. Each segment j has a sparse coefficient vector
  gamma_j: an intercept near ``logit(base_rate)``, one slope of +1 per standard deviation on
  numeric covariate ``x_{(j mod d) + 1}`` (sign -1 from the (d+1)-th segment on) and, for odd j,
  +0.8 on one non-reference region.
- Every creative of a segment has coefficients equal to its segment's gamma, except ONE
  deliberately deviant creative (the last creative of the first segment with at least two
  creatives) whose vector is far away: its main slope is flipped, it responds to another
  covariate and its intercept is higher.
- Exposures: each user is shown ``exposures_per_user`` distinct creatives uniformly at random
  (default 1) and responds with probability ``sigmoid(beta_creative . x)``. With
  ``exposure_weights`` (one positive weight per creative) creative k is drawn with probability
  w_k / sum(w) instead (several per user: the Gumbel top-e trick, i.e. successive draws without
  replacement), so some creatives can be shown to a few hundred users and others to thousands.
- A user's true segment is ``argmax_j gamma_j . x`` (the segment whose creatives it responds to
  best).

Truth is stored on the ORIGINAL (unstandardised) scale, with feature names following the
encoding convention of ``segmentation.data.encode``: ``intercept``, ``x1..xd``, then
``region=<level>`` for every level except the reference one (the most frequent level in the
exposure rows, ties by name), sorted by name. So a model fitted with ``fit_encoding`` and mapped
back with ``Encoding.to_original_scale`` is directly comparable to the truth.

Randomness comes in chunks of ``chunk_size`` users, each chunk with its own generators seeded by
``(seed, stream, chunk index)``: user covariates and exposures use separate streams, so
``simulate_users`` reproduces the campaign's users exactly, and the data for a given seed does
not depend on anything but the parameters (``chunk_size`` included).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass

import numpy as np

from segmentation.atomic import replace_dir

FORMAT_VERSION = 1
_USERS_STREAM, _EXPOSURE_STREAM = 0, 1


@dataclass(frozen=True)
class CampaignDesign:
    """The fixed parameters of a simulated campaign (see the module docstring)."""

    n_numeric: int = 5
    segment_sizes: tuple[int, ...] = (3, 3, 2, 2)
    region_levels: tuple[str, ...] = ("north", "south", "east", "west")
    region_probs: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
    base_rate: float = 0.08
    deviant: bool = True
    exposures_per_user: int = 1
    exposure_weights: tuple[float, ...] | None = None

    def __post_init__(self):
        """Reject designs the generator cannot honour (ValueError)."""
        if self.n_numeric < 1:
            raise ValueError("n_numeric must be at least 1")
        if not self.segment_sizes or min(self.segment_sizes) < 1:
            raise ValueError("segment_sizes must be a non-empty list of positive integers")
        if len(self.region_levels) != len(self.region_probs) or len(self.region_levels) < 2:
            raise ValueError("region_levels and region_probs must have the same length (>= 2)")
        if abs(sum(self.region_probs) - 1.0) > 1e-9:
            raise ValueError("region_probs must sum to 1")
        if not 0 < self.base_rate < 1:
            raise ValueError("base_rate must be in (0, 1)")
        if not 1 <= self.exposures_per_user <= self.n_creatives:
            raise ValueError(f"exposures_per_user must be in 1..{self.n_creatives}")
        if self.exposure_weights is not None:
            w = np.asarray(self.exposure_weights, dtype=float)
            if w.shape != (self.n_creatives,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
                raise ValueError(f"exposure_weights must be {self.n_creatives} positive finite "
                                 f"numbers (one per creative)")

    @property
    def exposure_probs(self) -> np.ndarray | None:
        """(K,) probability of each creative per draw, or None (uniform)."""
        if self.exposure_weights is None:
            return None
        w = np.asarray(self.exposure_weights, dtype=float)
        return w / w.sum()

    # ---------------------------------------------------------------- names and shapes
    @property
    def numeric(self) -> list[str]:
        """Numeric covariate names x1..xd."""
        return [f"x{i + 1}" for i in range(self.n_numeric)]

    @property
    def segments(self) -> list[str]:
        """Segment names seg1..segm."""
        return [f"seg{j + 1}" for j in range(len(self.segment_sizes))]

    @property
    def n_creatives(self) -> int:
        """K, the total number of creatives."""
        return int(sum(self.segment_sizes))

    @property
    def creatives(self) -> list[str]:
        """Creative names cr01.. in segment order."""
        width = max(2, len(str(self.n_creatives)))
        return [f"cr{c + 1:0{width}d}" for c in range(self.n_creatives)]

    @property
    def segment_of(self) -> np.ndarray:
        """(K,) segment index of each creative."""
        return np.repeat(np.arange(len(self.segment_sizes)), self.segment_sizes)

    @property
    def mapping(self) -> dict[str, list[str]]:
        """segment -> creatives."""
        out: dict[str, list[str]] = {s: [] for s in self.segments}
        for c, j in zip(self.creatives, self.segment_of):
            out[self.segments[j]].append(c)
        return out

    @property
    def covariate_mean(self) -> np.ndarray:
        """(d,) population means of x1..xd."""
        return 2.0 * np.arange(self.n_numeric)

    @property
    def covariate_sd(self) -> np.ndarray:
        """(d,) population sds of x1..xd."""
        return 1.0 + 0.5 * np.arange(self.n_numeric)

    @property
    def designated_reference(self) -> int:
        """Index of the most probable region (ties by name): the reference of the raw parameters."""
        return min(range(len(self.region_levels)),
                   key=lambda i: (-self.region_probs[i], self.region_levels[i]))

    @property
    def deviant_creative(self) -> int | None:
        """Index of the deviant creative (last creative of the first segment with >= 2), or None."""
        if not self.deviant:
            return None
        seg = next((j for j, n in enumerate(self.segment_sizes) if n >= 2), None)
        if seg is None:
            return None
        return int(np.cumsum(self.segment_sizes)[seg] - 1)

    # ---------------------------------------------------------------- raw parameters
    def raw_parameters(self):
        """Coefficients in the simulator's own parametrisation, original covariate scale.

        Returns ``(gamma_num, gamma_reg, beta_num, beta_reg)``: ``*_num`` are (m or K, 1 + d)
        (intercept, x1..xd) and ``*_reg`` (m or K, L) the additive effect of each region level
        (0 for the designated reference).
        """
        d, L, m = self.n_numeric, len(self.region_levels), len(self.segment_sizes)
        ref = self.designated_reference
        nonref = [i for i in sorted(range(L), key=lambda i: self.region_levels[i]) if i != ref]
        base = math.log(self.base_rate / (1.0 - self.base_rate))
        offsets = (0.0, -0.15, 0.1, -0.05, 0.15, -0.1)
        std_num = np.zeros((m, 1 + d))     # on the standardised numeric scale
        reg = np.zeros((m, L))
        for j in range(m):
            std_num[j, 0] = base + offsets[j % len(offsets)]
            std_num[j, 1 + j % d] = 1.0 if (j // d) % 2 == 0 else -1.0
            if j % 2 == 1:
                reg[j, nonref[(j // 2) % len(nonref)]] = 0.8
        seg_of = self.segment_of
        beta_std, beta_reg = std_num[seg_of].copy(), reg[seg_of].copy()
        dev = self.deviant_creative
        if dev is not None:
            j = seg_of[dev]
            main = 1 + j % d
            other = 1 + (j % d + d - 1) % d if d > 1 else main
            beta_std[dev, 0] += 0.5
            beta_std[dev, main] = -std_num[j, main]
            if other != main:
                beta_std[dev, other] += 1.0
            beta_reg[dev] = 0.0
            beta_reg[dev, nonref[-1]] = -0.8
        return (self._to_original(std_num), reg, self._to_original(beta_std), beta_reg)

    def _to_original(self, b: np.ndarray) -> np.ndarray:
        """Map (intercept, slopes per sd) to (intercept, slopes per unit of x)."""
        mu, sd = self.covariate_mean, self.covariate_sd
        out = b.copy()
        out[:, 1:] = b[:, 1:] / sd
        out[:, 0] = b[:, 0] - (b[:, 1:] * (mu / sd)).sum(axis=1)
        return out


# -------------------------------------------------------------------- chunk generation
def _chunk_users(design: CampaignDesign, seed: int, chunk: int, n: int):
    """Covariates of ``n`` users of chunk ``chunk``: (X (n, d), region index (n,))."""
    rng = np.random.default_rng([seed, _USERS_STREAM, chunk])
    X = rng.normal(design.covariate_mean, design.covariate_sd, size=(n, design.n_numeric))
    region = rng.choice(len(design.region_levels), size=n, p=np.asarray(design.region_probs))
    return X, region


def _scores(coef_num, coef_reg, X, region):
    """(n, r) linear predictors of every user under each of r coefficient rows."""
    return coef_num[:, 0] + X @ coef_num[:, 1:].T + coef_reg.T[region]


def _user_ids(start: int, stop: int, width: int) -> list[str]:
    """User ids u<zero-padded index> for indices start..stop-1."""
    return [f"u{i:0{width}d}" for i in range(start, stop)]


def _id_width(n_users: int) -> int:
    """Digits of the zero-padded user index (at least 6)."""
    return max(6, len(str(max(n_users - 1, 0))))


def _generate(design: CampaignDesign, n_users: int, seed: int, chunk_size: int):
    """Yield per chunk: dict of user arrays and dict of exposure arrays (numpy only)."""
    gamma_num, gamma_reg, beta_num, beta_reg = design.raw_parameters()
    K, e = design.n_creatives, design.exposures_per_user
    width = _id_width(n_users)
    for chunk, start in enumerate(range(0, n_users, chunk_size)):
        stop = min(start + chunk_size, n_users)
        n = stop - start
        X, region = _chunk_users(design, seed, chunk, n)
        true_seg = np.argmax(_scores(gamma_num, gamma_reg, X, region), axis=1)
        rng = np.random.default_rng([seed, _EXPOSURE_STREAM, chunk])
        probs = design.exposure_probs
        if probs is None and e == 1:
            shown = rng.integers(K, size=(n, 1))
        elif probs is None:
            shown = np.argsort(rng.random((n, K)), axis=1)[:, :e]
        elif e == 1:
            shown = rng.choice(K, size=(n, 1), p=probs)
        else:                      # Gumbel top-e: weighted draws without replacement
            keys = np.log(probs) - np.log(-np.log(rng.random((n, K))))
            shown = np.argsort(-keys, axis=1)[:, :e]
        rows = np.repeat(np.arange(n), e)
        creative = shown.reshape(-1)
        eta = (beta_num[creative, 0] + np.einsum("ij,ij->i", X[rows], beta_num[creative, 1:])
               + beta_reg[creative, region[rows]])
        y = (rng.random(len(rows)) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int64)
        users = {"index": np.arange(start, stop), "X": X, "region": region, "true_segment": true_seg}
        exposures = {"user": rows + start, "creative": creative, "response": y,
                     "X": X[rows], "region": region[rows]}
        yield chunk, users, exposures, width


def _truth(design: CampaignDesign, region_counts: np.ndarray, *, seed: int, n_users: int,
           n_exposures: int, n_positive: int, segment_counts: np.ndarray) -> dict:
    """truth.json content: coefficients in the encoding convention, original scale."""
    gamma_num, gamma_reg, beta_num, beta_reg = design.raw_parameters()
    levels = list(design.region_levels)
    ref = min(range(len(levels)), key=lambda i: (-int(region_counts[i]), levels[i]))
    onehot = sorted((i for i in range(len(levels)) if i != ref), key=lambda i: levels[i])
    names = ["intercept"] + design.numeric + [f"region={levels[i]}" for i in onehot]

    def convert(num, reg):
        """Raw (intercept, slopes) + per-level effects -> encoding order with the empirical reference."""
        out = np.column_stack([num[:, :1] + reg[:, [ref]], num[:, 1:],
                               reg[:, onehot] - reg[:, [ref]]])
        return out

    gamma, beta = convert(gamma_num, gamma_reg), convert(beta_num, beta_reg)
    dev = design.deviant_creative
    return {
        "format": FORMAT_VERSION,
        "seed": int(seed),
        "n_users": int(n_users),
        "n_exposures": int(n_exposures),
        "exposures_per_user": int(design.exposures_per_user),
        "exposure_weights": None if design.exposure_weights is None
        else list(design.exposure_weights),
        "base_rate": float(design.base_rate),
        "response_rate": float(n_positive / max(n_exposures, 1)),
        "columns": {"user": "user_id", "creative": "creative", "response": "response"},
        "numeric": design.numeric,
        "categorical": {"region": {
            "levels": levels, "probs": [float(p) for p in design.region_probs],
            "reference": levels[ref], "counts": {levels[i]: int(region_counts[i]) for i in range(len(levels))},
        }},
        "covariate_mean": design.covariate_mean.tolist(),
        "covariate_sd": design.covariate_sd.tolist(),
        "feature_names": names,
        "segments": design.mapping,
        "creatives": design.creatives,
        "gamma": {s: gamma[j].tolist() for j, s in enumerate(design.segments)},
        "beta": {c: beta[k].tolist() for k, c in enumerate(design.creatives)},
        "deviant_creatives": [] if dev is None else [design.creatives[dev]],
        "segment_shares": {s: float(segment_counts[j] / max(n_users, 1))
                           for j, s in enumerate(design.segments)},
        "users_path": "truth_users",
        "exposures_path": "exposures",
        "creatives_path": "creatives.csv",
    }


# -------------------------------------------------------------------- public API
@dataclass
class SimulatedCampaign:
    """An in-memory campaign: ``exposures`` (pandas: user_id, creative, response, x1..xd,
    region), ``users`` (pandas: user_id, x1..xd, region, true_segment), ``segments``
    (segment -> creatives) and ``truth`` (the truth.json content)."""

    exposures: object
    users: object
    segments: dict[str, list[str]]
    truth: dict


def _design(n_numeric, segment_sizes, base_rate, deviant, exposures_per_user, region_levels,
            region_probs, exposure_weights=None) -> CampaignDesign:
    """A validated CampaignDesign from plain arguments."""
    return CampaignDesign(
        n_numeric=int(n_numeric), segment_sizes=tuple(int(s) for s in segment_sizes),
        region_levels=tuple(str(r) for r in region_levels),
        region_probs=tuple(float(p) for p in region_probs), base_rate=float(base_rate),
        deviant=bool(deviant), exposures_per_user=int(exposures_per_user),
        exposure_weights=None if exposure_weights is None
        else tuple(float(w) for w in exposure_weights),
    )


def simulate_arrays(n_users: int = 20_000, seed: int = 0, *, n_numeric: int = 5,
                    segment_sizes=(3, 3, 2, 2), base_rate: float = 0.08, deviant: bool = True,
                    exposures_per_user: int = 1,
                    region_levels=("north", "south", "east", "west"),
                    region_probs=(0.4, 0.3, 0.2, 0.1),
                    chunk_size: int = 100_000, exposure_weights=None) -> SimulatedCampaign:
    """Simulate a campaign in memory; same rows as ``simulate_campaign`` with the same arguments."""
    import pandas as pd

    design = _design(n_numeric, segment_sizes, base_rate, deviant, exposures_per_user,
                     region_levels, region_probs, exposure_weights)
    exp_parts, user_parts = [], []
    region_counts = np.zeros(len(design.region_levels), dtype=np.int64)
    seg_counts = np.zeros(len(design.segment_sizes), dtype=np.int64)
    n_pos = n_exp = 0
    for _, users, exposures, width in _generate(design, n_users, seed, chunk_size):
        exp_parts.append(_exposure_frame(design, exposures, width))
        user_parts.append(_user_frame(design, users, width))
        region_counts += np.bincount(exposures["region"], minlength=len(region_counts))
        seg_counts += np.bincount(users["true_segment"], minlength=len(seg_counts))
        n_pos += int(exposures["response"].sum())
        n_exp += len(exposures["response"])
    truth = _truth(design, region_counts, seed=seed, n_users=n_users, n_exposures=n_exp,
                   n_positive=n_pos, segment_counts=seg_counts)
    exposures = pd.concat(exp_parts, ignore_index=True) if exp_parts else _exposure_frame(design, None, 6)
    users = pd.concat(user_parts, ignore_index=True) if user_parts else _user_frame(design, None, 6)
    return SimulatedCampaign(exposures=exposures, users=users, segments=design.mapping, truth=truth)


def simulate_users(n_users: int = 1_000, seed: int = 0, *, n_numeric: int = 5,
                   segment_sizes=(3, 3, 2, 2), region_levels=("north", "south", "east", "west"),
                   region_probs=(0.4, 0.3, 0.2, 0.1), chunk_size: int = 100_000):
    """Users to score (pandas: user_id, x1..xd, region, true_segment), without exposures.

    With the same seed and design they are exactly the first ``n_users`` users of the campaign
    (the covariates come from their own random stream), which is cheap: no responses are drawn.
    """
    import pandas as pd

    design = _design(n_numeric, segment_sizes, 0.08, True, 1, region_levels, region_probs)
    gamma_num, gamma_reg, _, _ = design.raw_parameters()
    width = _id_width(n_users)
    parts = []
    for chunk, start in enumerate(range(0, n_users, chunk_size)):
        stop = min(start + chunk_size, n_users)
        X, region = _chunk_users(design, seed, chunk, stop - start)
        true_seg = np.argmax(_scores(gamma_num, gamma_reg, X, region), axis=1)
        parts.append(_user_frame(design, {"index": np.arange(start, stop), "X": X,
                                          "region": region, "true_segment": true_seg}, width))
    return pd.concat(parts, ignore_index=True) if parts else _user_frame(design, None, 6)


def _exposure_frame(design: CampaignDesign, exp, width: int):
    """pandas exposure rows of one chunk (an empty typed frame for ``exp=None``)."""
    import pandas as pd

    if exp is None:
        return pd.DataFrame({"user_id": pd.Series(dtype=str), "creative": pd.Series(dtype=str),
                             "response": pd.Series(dtype=np.int64),
                             **{c: pd.Series(dtype=float) for c in design.numeric},
                             "region": pd.Series(dtype=str)})
    start, stop = int(exp["user"].min()), int(exp["user"].max()) + 1
    ids = np.asarray(_user_ids(start, stop, width), dtype=object)
    cols = {
        "user_id": ids[exp["user"] - start],
        "creative": np.asarray(design.creatives, dtype=object)[exp["creative"]],
        "response": exp["response"].astype(np.int64),
    }
    for i, c in enumerate(design.numeric):
        cols[c] = exp["X"][:, i]
    cols["region"] = np.asarray(design.region_levels, dtype=object)[exp["region"]]
    return pd.DataFrame(cols)


def _user_frame(design: CampaignDesign, users, width: int):
    """pandas users of one chunk with their true segment (an empty typed frame for ``users=None``)."""
    import pandas as pd

    if users is None:
        return pd.DataFrame({"user_id": pd.Series(dtype=str),
                             **{c: pd.Series(dtype=float) for c in design.numeric},
                             "region": pd.Series(dtype=str), "true_segment": pd.Series(dtype=str)})
    idx = users["index"]
    cols = {"user_id": np.asarray(_user_ids(int(idx[0]), int(idx[-1]) + 1, width), dtype=object)}
    for i, c in enumerate(design.numeric):
        cols[c] = users["X"][:, i]
    cols["region"] = np.asarray(design.region_levels, dtype=object)[users["region"]]
    cols["true_segment"] = np.asarray(design.segments, dtype=object)[users["true_segment"]]
    return pd.DataFrame(cols)


def simulate_campaign(out_dir: str, n_users: int = 200_000, seed: int = 0, *, n_numeric: int = 5,
                      segment_sizes=(3, 3, 2, 2), base_rate: float = 0.08, deviant: bool = True,
                      exposures_per_user: int = 1,
                      region_levels=("north", "south", "east", "west"),
                      region_probs=(0.4, 0.3, 0.2, 0.1), chunk_size: int = 100_000,
                      chunks_per_file: int = 1, overwrite: bool = False,
                      exposure_weights=None) -> dict:
    """Write a simulated campaign to ``out_dir``; return the truth dict (plus ``out_dir``).

    Files: ``exposures/part-*.parquet`` (user_id string, creative string, response int64 0/1,
    x1..xd double, region string; written with pyarrow chunk by chunk, one row group per
    ``chunk_size`` users and a new file every ``chunks_per_file`` chunks, so memory stays
    bounded by a chunk), ``creatives.csv`` (creative,segment), ``truth_users/part-*.parquet``
    (user_id, true_segment) and ``truth.json`` (see the module docstring; paths inside are
    relative to ``out_dir``).

    Everything is written into a hidden temporary sibling directory then renamed to
    ``out_dir``. An existing non-empty ``out_dir`` raises ``FileExistsError`` unless
    ``overwrite=True`` (an empty one is replaced).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = os.path.abspath(str(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise FileExistsError(f"{out_dir} exists and is not a directory")
        if os.listdir(out_dir) and not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True to replace it")
    design = _design(n_numeric, segment_sizes, base_rate, deviant, exposures_per_user,
                     region_levels, region_probs, exposure_weights)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{uuid.uuid4().hex}")
    os.makedirs(os.path.join(tmp, "exposures"))
    os.makedirs(os.path.join(tmp, "truth_users"))
    try:
        exp_schema = pa.schema(
            [("user_id", pa.string()), ("creative", pa.string()), ("response", pa.int64())]
            + [(c, pa.float64()) for c in design.numeric] + [("region", pa.string())]
        )
        user_schema = pa.schema([("user_id", pa.string()), ("true_segment", pa.string())])
        region_counts = np.zeros(len(design.region_levels), dtype=np.int64)
        seg_counts = np.zeros(len(design.segment_sizes), dtype=np.int64)
        n_pos = n_exp = 0
        writers: tuple | None = None
        current = -1
        try:
            for chunk, users, exposures, width in _generate(design, n_users, seed, chunk_size):
                file_index = chunk // max(1, int(chunks_per_file))
                if file_index != current:
                    if writers is not None:
                        for w in writers:
                            w.close()
                    name = f"part-{file_index:05d}.parquet"
                    writers = (pq.ParquetWriter(os.path.join(tmp, "exposures", name), exp_schema),
                               pq.ParquetWriter(os.path.join(tmp, "truth_users", name), user_schema))
                    current = file_index
                ef = _exposure_frame(design, exposures, width)
                writers[0].write_table(pa.Table.from_pandas(ef, schema=exp_schema, preserve_index=False))
                uf = _user_frame(design, users, width)[["user_id", "true_segment"]]
                writers[1].write_table(pa.Table.from_pandas(uf, schema=user_schema, preserve_index=False))
                region_counts += np.bincount(exposures["region"], minlength=len(region_counts))
                seg_counts += np.bincount(users["true_segment"], minlength=len(seg_counts))
                n_pos += int(exposures["response"].sum())
                n_exp += len(exposures["response"])
        finally:
            if writers is not None:
                for w in writers:
                    w.close()
        if n_users == 0:
            pq.write_table(exp_schema.empty_table(), os.path.join(tmp, "exposures", "part-00000.parquet"))
            pq.write_table(user_schema.empty_table(), os.path.join(tmp, "truth_users", "part-00000.parquet"))
        with open(os.path.join(tmp, "creatives.csv"), "w") as fh:
            fh.write("creative,segment\n")
            for seg, crs in design.mapping.items():
                for c in crs:
                    fh.write(f"{c},{seg}\n")
        truth = _truth(design, region_counts, seed=seed, n_users=n_users, n_exposures=n_exp,
                       n_positive=n_pos, segment_counts=seg_counts)
        with open(os.path.join(tmp, "truth.json"), "w") as fh:
            json.dump(truth, fh, indent=1)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dict(truth, out_dir=out_dir)


def load_truth(out_dir: str) -> dict:
    """Read ``out_dir/truth.json``; relative paths in it are made absolute."""
    with open(os.path.join(out_dir, "truth.json")) as fh:
        truth = json.load(fh)
    for key in ("users_path", "exposures_path", "creatives_path"):
        if key in truth and not os.path.isabs(truth[key]):
            truth[key] = os.path.join(os.path.abspath(out_dir), truth[key])
    return truth


def read_segments_csv(path: str) -> dict[str, list[str]]:
    """Read a ``creative,segment`` CSV (as written by ``simulate_campaign``) into segment -> creatives."""
    import csv

    out: dict[str, list[str]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["segment"], []).append(row["creative"])
    return out


def design_from_truth(truth: dict, frame) -> np.ndarray:
    """(n, p) design on the ORIGINAL scale in truth's feature order (intercept, x.., region=..)."""
    names = truth["feature_names"]
    X = np.empty((len(frame), len(names)))
    for i, name in enumerate(names):
        if name == "intercept":
            X[:, i] = 1.0
        elif "=" in name:
            col, level = name.split("=", 1)
            X[:, i] = (np.asarray(frame[col], dtype=object) == level)
        else:
            X[:, i] = np.asarray(frame[name], dtype=np.float64)
    return X


def true_segments(truth: dict, frame) -> np.ndarray:
    """Index of argmax_j gamma_j . x for each row of ``frame`` (pandas with x1..xd and region),
    computed from the truth dict alone (segment order = ``truth['gamma']`` order)."""
    G = np.asarray(list(truth["gamma"].values()))
    return np.argmax(design_from_truth(truth, frame) @ G.T, axis=1)
