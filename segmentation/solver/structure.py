"""Which creative belongs to which segment: the shape of the fused group-lasso problem.

Notation used across the solver:

- K creatives, indexed c = 0..K-1 (coefficient order), m segments j = 0..m-1,
  p coefficients per creative (column 0 is the intercept).
- ``segment_of[c] = j``: creative c was designed for segment j; n_j = #{c: segment_of[c] = j}.
- A *free* segment (e.g. a control arm) holds exactly one creative whose coefficients are
  fitted but neither fused nor L1-penalised, and which never receives users in assignment.

Parametrisation: beta_c = gamma_{segment_of[c]} + delta_c, so the penalty

    lambda * sum_j [ (1-alpha)/n_j * sum_{c in j} ||delta_c||_2 + alpha * ||gamma_j[1:]||_1 ]

is block separable in theta = (gamma, delta).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SegmentStructure:
    """Creative -> segment map, in coefficient order."""

    creatives: tuple[str, ...]
    segments: tuple[str, ...]
    segment_of: tuple[int, ...]
    free_segments: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self):
        if len(self.creatives) != len(self.segment_of):
            raise ValueError("creatives and segment_of must have the same length")
        if len(set(self.creatives)) != len(self.creatives):
            raise ValueError("creative names must be unique")
        if len(set(self.segments)) != len(self.segments):
            raise ValueError("segment names must be unique")
        counts = np.bincount(np.asarray(self.segment_of, dtype=int), minlength=len(self.segments))
        if len(counts) > len(self.segments) or np.any(counts == 0):
            empty = [self.segments[j] for j in np.flatnonzero(counts == 0)]
            raise ValueError(f"segments with no creative: {empty}")
        for j in self.free_segments:
            if counts[j] != 1:
                raise ValueError(f"free segment {self.segments[j]!r} must hold exactly one creative")

    @classmethod
    def from_mapping(cls, mapping: dict[str, list[str]], free: tuple[str, ...] = ()) -> "SegmentStructure":
        """Build from ``{segment: [creatives]}``; creative order follows the mapping's order."""
        creatives: list[str] = []
        segment_of: list[int] = []
        for j, (seg, crs) in enumerate(mapping.items()):
            for c in crs:
                creatives.append(str(c))
                segment_of.append(j)
        segments = tuple(str(s) for s in mapping)
        free_idx = frozenset(segments.index(s) for s in free)
        return cls(tuple(creatives), segments, tuple(segment_of), free_idx)

    @property
    def n_creatives(self) -> int:
        return len(self.creatives)

    @property
    def n_segments(self) -> int:
        return len(self.segments)

    @property
    def segment_index(self) -> np.ndarray:
        """(K,) int array: segment of each creative."""
        return np.asarray(self.segment_of, dtype=np.int64)

    @property
    def sizes(self) -> np.ndarray:
        """(m,) n_j, number of creatives of each segment."""
        return np.bincount(self.segment_index, minlength=self.n_segments)

    @property
    def penalized(self) -> np.ndarray:
        """(m,) bool: False for free segments (control arms)."""
        out = np.ones(self.n_segments, dtype=bool)
        out[list(self.free_segments)] = False
        return out

    @property
    def assignable_segments(self) -> np.ndarray:
        """Indices of segments users can be assigned to (every segment but free ones)."""
        return np.flatnonzero(self.penalized)

    def creatives_of(self, j: int) -> np.ndarray:
        return np.flatnonzero(self.segment_index == j)
