"""Difference-of-means directions, centroids and belief scores.

Contract:
- A :class:`DirectionSet` holds one vector per captured row, ``vectors`` (L+1, d) float32, unnormalised by default
  (the paper's scale), plus the two centroids it came from (``pos_centroid`` - ``neg_centroid`` = ``vectors``
  before any normalisation). It supports arithmetic (``-2.0 * d``, ``d1 + d2``).
- ``belief_scores(h, mu_pos, mu_neg)`` = cos(h, mu_pos) - cos(h, mu_neg) per row, in float64 with clipping
  (paper Eq. 2); ``delta`` averages it over rows (Eqs. 3-4; all L+1 rows by default, as the paper's code does).
- :class:`DirectionBundle` groups the harmfulness and refusal directions, category directions and provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "DirectionBundle",
    "DirectionSet",
    "belief_scores",
    "cosine",
    "delta",
    "layer_cosines",
]


def _as3(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{what} must be (n, L+1, d) shaped, got {a.shape}")
    return a


@dataclass
class DirectionSet:
    """Per-row direction vectors ``vectors`` (L+1, d) and their centroids."""

    name: str
    vectors: np.ndarray
    position: str = "t_inst"
    pos_centroid: np.ndarray | None = None
    neg_centroid: np.ndarray | None = None
    n_pos: int = 0
    n_neg: int = 0
    normalized: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2:
            raise ValueError(f"direction vectors must be (L+1, d), got {self.vectors.shape}")
        if not np.isfinite(self.vectors).all():
            raise ValueError(f"direction {self.name!r} contains NaN or inf")

    @classmethod
    def from_diff_of_means(
        cls,
        name: str,
        pos_acts: np.ndarray,
        neg_acts: np.ndarray,
        *,
        position: str = "t_inst",
        normalize: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> DirectionSet:
        """mean(pos_acts) - mean(neg_acts) per row; acts are (n, L+1, d)."""
        pos, neg = _as3(pos_acts, "positive activations"), _as3(neg_acts, "negative activations")
        if len(pos) == 0 or len(neg) == 0:
            raise ValueError(
                f"direction {name!r} needs at least one example on each side (got {len(pos)} and {len(neg)})"
            )
        if pos.shape[1:] != neg.shape[1:]:
            raise ValueError(f"activation shapes differ: {pos.shape[1:]} vs {neg.shape[1:]}")
        mu_p, mu_n = pos.mean(0), neg.mean(0)
        d = cls(
            name=name,
            vectors=(mu_p - mu_n).astype(np.float32),
            position=position,
            pos_centroid=mu_p.astype(np.float32),
            neg_centroid=mu_n.astype(np.float32),
            n_pos=len(pos),
            n_neg=len(neg),
            meta=dict(meta or {}),
        )
        return d.unit() if normalize else d

    @property
    def n_rows(self) -> int:
        return self.vectors.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.vectors.shape[1]

    def norms(self) -> np.ndarray:
        return np.linalg.norm(self.vectors.astype(np.float64), axis=1)

    def unit(self) -> DirectionSet:
        n = self.norms()[:, None]
        return replace(self, vectors=(self.vectors / np.where(n > 0, n, 1.0)).astype(np.float32), normalized=True)

    def _scaled(self, vectors: np.ndarray, name: str) -> DirectionSet:
        return replace(self, name=name, vectors=vectors.astype(np.float32))

    def __mul__(self, c: float) -> DirectionSet:
        return self._scaled(self.vectors * float(c), f"{c:g}*{self.name}")

    __rmul__ = __mul__

    def __neg__(self) -> DirectionSet:
        return self._scaled(-self.vectors, f"-{self.name}")

    def __add__(self, other: DirectionSet) -> DirectionSet:
        if self.vectors.shape != other.vectors.shape:
            raise ValueError("direction shapes differ")
        return replace(
            self,
            name=f"{self.name}+{other.name}",
            vectors=self.vectors + other.vectors,
            pos_centroid=None,
            neg_centroid=None,
        )

    def __sub__(self, other: DirectionSet) -> DirectionSet:
        return self + (-other)

    def beliefs(self, h: np.ndarray) -> np.ndarray:
        if self.pos_centroid is None or self.neg_centroid is None:
            raise ValueError(f"direction {self.name!r} has no centroids")
        return belief_scores(h, self.pos_centroid, self.neg_centroid)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "position": self.position,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "normalized": self.normalized,
            "norms": [round(float(x), 5) for x in self.norms()],
            **{k: v for k, v in self.meta.items() if isinstance(v, (str, int, float, bool))},
        }


def cosine(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = (a * b).sum(axis)
    den = np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis)
    return np.clip(num / np.where(den > 0, den, 1.0), -1.0, 1.0) * (den > 0)


def belief_scores(h: np.ndarray, mu_pos: np.ndarray, mu_neg: np.ndarray) -> np.ndarray:
    """s_l(h) = cos(h_l, mu_pos_l) - cos(h_l, mu_neg_l): h (n, L+1, d) or (L+1, d) -> (n, L+1) float64."""
    h3 = _as3(h, "hidden states")
    mp, mn = np.asarray(mu_pos, dtype=np.float64), np.asarray(mu_neg, dtype=np.float64)
    if mp.shape != h3.shape[1:] or mn.shape != h3.shape[1:]:
        raise ValueError(f"centroids {mp.shape} do not match hidden states {h3.shape[1:]}")
    return cosine(h3, mp[None]) - cosine(h3, mn[None])


def delta(h: np.ndarray, mu_pos: np.ndarray, mu_neg: np.ndarray, rows: Any = None) -> np.ndarray:
    """Mean belief score over rows (all L+1 by default): (n,)."""
    s = belief_scores(h, mu_pos, mu_neg)
    if rows is not None:
        s = s[:, list(rows)]
    return s.mean(axis=1)


def layer_cosines(a: DirectionSet | np.ndarray, b: DirectionSet | np.ndarray) -> np.ndarray:
    """Per-row cosine between two direction sets: (L+1,)."""
    va = a.vectors if isinstance(a, DirectionSet) else np.asarray(a)
    vb = b.vectors if isinstance(b, DirectionSet) else np.asarray(b)
    if va.shape != vb.shape:
        raise ValueError(f"direction shapes differ: {va.shape} vs {vb.shape}")
    return cosine(va, vb)


@dataclass
class DirectionBundle:
    """Everything derived for one model: named direction sets plus provenance."""

    directions: dict[str, DirectionSet]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def harmfulness(self) -> DirectionSet:
        return self.get("harmfulness")

    @property
    def refusal(self) -> DirectionSet:
        return self.get("refusal")

    def names(self) -> list[str]:
        return list(self.directions)

    def categories(self) -> list[str]:
        return [n for n in self.directions if n.startswith("category:")]

    def get(self, name: str) -> DirectionSet:
        if name not in self.directions:
            raise KeyError(f"no direction named {name!r}; have {', '.join(self.directions)}")
        return self.directions[name]

    @property
    def n_rows(self) -> int:
        return next(iter(self.directions.values())).n_rows

    @property
    def hidden_size(self) -> int:
        return next(iter(self.directions.values())).hidden_size

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_layers": self.n_rows - 1, "hidden_size": self.hidden_size, "norms": {}}
        for n, d in self.directions.items():
            out["norms"][n] = [round(float(x), 5) for x in d.norms()]
        if "harmfulness" in self.directions and "refusal" in self.directions:
            out["cosine_harmfulness_refusal"] = [
                round(float(x), 5) for x in layer_cosines(self.harmfulness, self.refusal)
            ]
        return out
