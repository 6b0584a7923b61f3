"""Campaigns the other tests never use: many creatives with rare clicks, odd names, odd user ids.

Built with ``segmentation.data.simulate`` (its ``exposure_weights`` give some creatives a few
hundred users and others thousands); everything seeded.
"""
from __future__ import annotations

import os

import numpy as np

from segmentation.data.simulate import simulate_arrays

# 10 segments of uneven size (in creatives): 80 creatives in all
MANY_SEGMENT_SIZES = (20, 15, 12, 9, 8, 6, 4, 3, 2, 1)
RARE_BASE_RATE = 0.003


def exposure_weights(n_creatives: int, seed: int = 7, rare_share: float = 0.25) -> np.ndarray:
    """Relative exposure weights: a quarter of the creatives (seeded pick) get weight 1, the rest
    log-uniform in [6, 12]: with 150k users the rare ones are shown to ~300 users each."""
    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(np.log(6.0), np.log(12.0), n_creatives))
    rare = rng.choice(n_creatives, int(round(rare_share * n_creatives)), replace=False)
    w[rare] = 1.0
    return w


def many_creatives_campaign(n_users: int = 150_000, seed: int = 0, *,
                            segment_sizes=MANY_SEGMENT_SIZES, n_numeric: int = 2):
    """An 80-creative rare-click campaign (``SimulatedCampaign``); click rates ~0.1-1%."""
    K = int(sum(segment_sizes))
    return simulate_arrays(n_users, seed, n_numeric=n_numeric, segment_sizes=segment_sizes,
                           base_rate=RARE_BASE_RATE, exposure_weights=exposure_weights(K),
                           chunk_size=50_000)


def write_parquet_files(frame, out_dir: str, n_files: int) -> str:
    """``frame`` as ``n_files`` Parquet files of consecutive rows (pyarrow, no Spark)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(out_dir, exist_ok=True)
    bounds = np.linspace(0, len(frame), n_files + 1).astype(int)
    for i in range(n_files):
        part = frame.iloc[bounds[i]:bounds[i + 1]]
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False),
                       os.path.join(out_dir, f"part-{i:05d}.parquet"))
    return out_dir


def write_segments_csv(mapping: dict[str, list[str]], path: str) -> str:
    """``creative,segment`` CSV with proper quoting (names may hold commas, quotes, spaces)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["creative", "segment"])
        for seg, crs in mapping.items():
            for c in crs:
                w.writerow([c, seg])
    return path


def local_design(exposures, n_folds: int = 1, seed: int = 0):
    """In-memory design of a simulated campaign for ``LocalOracle``: standardised x1..xd, region
    one-hot (reference = most frequent level), creatives indexed in ``cr01..`` order, and
    folds by a seeded hash of the user id (not Spark's: in-memory tests only).

    Returns (X without intercept, y, creative index, fold or None, feature names)."""
    import zlib

    import pandas as pd

    num = [c for c in exposures.columns if c.startswith("x") and c[1:].isdigit()]
    Xn = exposures[num].to_numpy(dtype=float)
    Xn = (Xn - Xn.mean(axis=0)) / Xn.std(axis=0)
    counts = exposures["region"].value_counts()
    ref = sorted(counts.index, key=lambda v: (-counts[v], v))[0]
    levels = sorted(v for v in counts.index if v != ref)
    Xc = np.column_stack([(exposures["region"] == v).to_numpy(dtype=float) for v in levels])
    creatives = sorted(exposures["creative"].unique())
    cidx = pd.Categorical(exposures["creative"], categories=creatives).codes.astype(np.int64)
    fold = None
    if n_folds > 1:
        fold = np.array([zlib.crc32(f"{seed}:{u}".encode()) % n_folds
                         for u in exposures["user_id"]], dtype=np.int64)
    names = num + [f"region={v}" for v in levels]
    return np.column_stack([Xn, Xc]), exposures["response"].to_numpy(dtype=float), cidx, fold, names


def shapes_config(data_dir: str, model_dir: str, *, model: dict | None = None, store: str = "files",
                  folds: int = 3, mlflow: dict | None = None, covariates=("x1", "x2"),
                  categorical=("region",), user_col: str = "user_id",
                  creative_col: str = "creative") -> dict:
    """A raw config for a campaign written by these helpers (``exposures/``, ``creatives.csv``)."""
    return {
        "data": {"exposures": os.path.join(data_dir, "exposures"), "user_col": user_col,
                 "creative_col": creative_col, "response_col": "response",
                 "covariates": list(covariates), "categorical": list(categorical), "store": store},
        "segments_file": os.path.join(data_dir, "creatives.csv"),
        "model": dict(model or {}),
        "cv": {"folds": folds, "seed": 0, "rule": "1se"},
        "output": {"model_dir": model_dir},
        "mlflow": dict(mlflow) if mlflow is not None else {"enabled": False},
    }
