"""Compact numeric blocks: the form in which exposure rows reach the likelihood oracle.

A block holds a slice of the training rows as contiguous numpy arrays:

- ``X``: (n, p) float64 design; column 0 is the intercept (all ones), the rest are the encoded
  (and, if requested, standardised) covariates.
- ``y``: (n,) float64 responses in {0, 1}.
- ``creative``: (n,) int32 creative index c in 0..K-1 (coefficient order).
- ``fold``: (n,) int16 cross-validation fold in 0..F-1 (all 0 when there is no CV).
- ``offsets``: (K*F + 1,) int64; rows are sorted by (creative, fold) and the rows of
  (c, f) are ``offsets[c*F + f] : offsets[c*F + f + 1]``. Contiguous slices keep each
  oracle pass a handful of dense matrix products (no scatter-adds, no per-row Python).

This module is pure numpy: the Spark side builds blocks with ``make_block`` inside
``mapInArrow`` and writes them with ``save_block``; the oracles read them with ``load_block``.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DesignBlock:
    X: np.ndarray
    y: np.ndarray
    creative: np.ndarray
    fold: np.ndarray
    offsets: np.ndarray
    n_creatives: int
    n_folds: int
    # CRC-32 of the stored arrays this block was rebuilt from, when it was transformed on
    # loading (``blockcache.block_from_row`` standardising a raw cached block); else None
    source_crc: int | None = None

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    def rows(self, c: int, f: int) -> slice:
        i = c * self.n_folds + f
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def counts(self) -> np.ndarray:
        """(F, K) number of rows of each fold and creative."""
        return np.diff(self.offsets).reshape(self.n_creatives, self.n_folds).T.copy()

    def positives(self) -> np.ndarray:
        """(F, K) number of positive responses of each fold and creative."""
        out = np.zeros((self.n_folds, self.n_creatives))
        for c in range(self.n_creatives):
            for f in range(self.n_folds):
                out[f, c] = self.y[self.rows(c, f)].sum()
        return out


def block_order(creative, fold, n_folds: int) -> tuple[np.ndarray, np.ndarray]:
    """(key, order): each row's slice key creative * n_folds + fold, and the stable sort of the
    rows by it (the row order of a block)."""
    key = np.asarray(creative).astype(np.int64) * n_folds + np.asarray(fold)
    return key, np.argsort(key, kind="stable")


def make_block(X, y, creative, fold=None, *, n_creatives: int, n_folds: int = 1) -> DesignBlock:
    """Sort rows by (creative, fold) and index the slices. ``X`` must already hold the intercept."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    creative = np.asarray(creative, dtype=np.int32)
    fold = np.zeros(len(y), dtype=np.int16) if fold is None else np.asarray(fold, dtype=np.int16)
    n = X.shape[0]
    if not (len(y) == len(creative) == len(fold) == n):
        raise ValueError("X, y, creative and fold must have the same number of rows")
    if n and (creative.min() < 0 or creative.max() >= n_creatives):
        raise ValueError(f"creative index out of range 0..{n_creatives - 1}")
    if n and (fold.min() < 0 or fold.max() >= n_folds):
        raise ValueError(f"fold index out of range 0..{n_folds - 1}")
    key, order = block_order(creative, fold, n_folds)
    counts = np.bincount(key, minlength=n_creatives * n_folds)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return DesignBlock(
        X=np.ascontiguousarray(X[order]),
        y=np.ascontiguousarray(y[order]),
        creative=np.ascontiguousarray(creative[order]),
        fold=np.ascontiguousarray(fold[order]),
        offsets=offsets,
        n_creatives=int(n_creatives),
        n_folds=int(n_folds),
    )


def save_block(block: DesignBlock, path: str, write_x=None) -> None:
    """Write a block as a directory of ``.npy`` files, atomically (temp dir + rename).

    One ``.npy`` per array (not ``.npz``) so readers can memory-map them: blocks kept in
    ``/dev/shm`` are then shared by every Python worker of a host instead of copied into each.
    ``write_x(npy_path)``, if given, writes ``X.npy`` in place of ``block.X`` (a writer that
    fills a memory-mapped file without holding the design in memory: ``blockstore.save_sorted_block``).
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    for name in _ARRAYS:
        if name == "X" and write_x is not None:
            write_x(os.path.join(tmp, "X.npy"))
        else:
            np.save(os.path.join(tmp, f"{name}.npy"), getattr(block, name))
    np.save(os.path.join(tmp, "shape.npy"), np.array([block.n_creatives, block.n_folds], dtype=np.int64))
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def load_block(path: str, mmap: bool = True) -> DesignBlock:
    """Read a block written by ``save_block`` (memory-mapped, read-only, by default)."""
    mode = "r" if mmap else None
    arrays = {name: np.load(os.path.join(path, f"{name}.npy"), mmap_mode=mode) for name in _ARRAYS}
    k, f = (int(v) for v in np.load(os.path.join(path, "shape.npy")))
    return DesignBlock(**arrays, n_creatives=k, n_folds=f)


_ARRAYS = ("X", "y", "creative", "fold", "offsets")
