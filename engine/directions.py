"""Difference-of-means directions, centroids and belief scores.

Contract:
- A :class:`DirectionSet` holds one vector per captured row, ``vectors`` (L+1, d) float32, unnormalised by default
  (the paper's scale), plus the two centroids it came from (``pos_centroid`` - ``neg_centroid`` = ``vectors``
  before any normalisation). It supports arithmetic (``-2.0 * d``, ``d1 + d2``).
- ``belief_scores(h, mu_pos, mu_neg)`` = cos(h, mu_pos) - cos(h, mu_neg) per row, in float64 with clipping
  (paper Eq. 2); ``delta`` averages it over rows (Eqs. 3-4; all L+1 rows by default, as the paper's code does).
- :class:`DirectionBundle` groups the harmfulness and refusal directions, category directions and provenance.
- ``bootstrap_cosine(a_acts, a_pos, a_neg, b_acts, b_pos, b_neg)`` gives the per-layer cosine between two
  difference-of-means directions with a percentile bootstrap interval (:class:`CosineInterval`): each replicate
  resamples the *prompts* with replacement within each group (a prompt behind both directions is resampled once,
  for both), recomputes both directions and their cosine per layer. Seeded; pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "CosineInterval",
    "DirectionBundle",
    "DirectionSet",
    "belief_scores",
    "bootstrap_cosine",
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


@dataclass(frozen=True)
class CosineInterval:
    """Per-layer cosine between two directions with a bootstrap interval: ``point``, ``low``, ``high`` (L+1,)."""

    point: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float
    n_boot: int
    seed: int
    groups: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: point / low / high rounded to 5 decimals, plus level, n_boot, seed, group sizes, method."""
        return {
            "point": [round(float(x), 5) for x in self.point],
            "low": [round(float(x), 5) for x in self.low],
            "high": [round(float(x), 5) for x in self.high],
            "level": self.level,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "groups": dict(self.groups),
            "method": "percentile bootstrap over prompts, resampled within each group",
        }

    def agrees_with(self, cosines: Any, tol: float = 0.01) -> bool:
        """Whether ``point`` equals per-layer ``cosines`` (e.g. a bundle's own) within ``tol``: the interval was
        computed from the prompts behind those directions."""
        c = np.asarray(cosines, dtype=np.float64)
        return c.shape == self.point.shape and bool(np.abs(c - self.point).max() <= tol)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CosineInterval:
        return cls(
            point=np.asarray(d["point"], dtype=np.float64),
            low=np.asarray(d["low"], dtype=np.float64),
            high=np.asarray(d["high"], dtype=np.float64),
            level=float(d["level"]),
            n_boot=int(d["n_boot"]),
            seed=int(d["seed"]),
            groups={str(k): int(v) for k, v in dict(d.get("groups", {})).items()},
        )


def _mask(m: Any, n: int, what: str) -> np.ndarray:
    a = np.asarray(m, dtype=bool)
    if a.shape != (n,):
        raise ValueError(f"{what} must be a boolean mask with one entry per prompt ({n}), got shape {a.shape}")
    if not a.any():
        raise ValueError(f"{what} selects no prompt: each side of a direction needs at least one")
    return a


def bootstrap_cosine(
    a_acts: np.ndarray,
    a_pos: Any,
    a_neg: Any,
    b_acts: np.ndarray,
    b_pos: Any,
    b_neg: Any,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    chunk: int = 100,
) -> CosineInterval:
    """cos(a, b) per layer with a percentile bootstrap interval, a = mean(a_acts[a_pos]) - mean(a_acts[a_neg]) and
    b likewise; ``a_acts`` and ``b_acts`` are (n, L+1, d) states of the same n prompts (e.g. at t_inst and at
    t_post_inst), the masks (n,) booleans.

    Each replicate draws, within every stratum of prompts with the same group memberships, as many prompts as the
    stratum has, with replacement, so every group keeps its size; both directions are recomputed from the same draw.
    """
    A, B = _as3(a_acts, "a_acts"), _as3(b_acts, "b_acts")
    if A.shape != B.shape:
        raise ValueError(f"a_acts and b_acts must hold the same prompts and layers: {A.shape} vs {B.shape}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 10:
        raise ValueError(f"n_boot must be an integer >= 10, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n, rows, d = A.shape
    masks = [_mask(m, n, w) for m, w in ((a_pos, "a_pos"), (a_neg, "a_neg"), (b_pos, "b_pos"), (b_neg, "b_neg"))]
    M = np.stack(masks, axis=1).astype(np.float64)  # (n, 4)
    # a direction whose norm is rounding noise next to the states it came from (e.g. row 0 at t_post_inst, where
    # every prompt has the same last token) has no direction: its cosine is 0, in the point and in every replicate
    tiny_a = 1e-5 * np.linalg.norm(A.mean(0), axis=-1)
    tiny_b = 1e-5 * np.linalg.norm(B.mean(0), axis=-1)

    def cos(va: np.ndarray, vb: np.ndarray) -> np.ndarray:
        ok = (np.linalg.norm(va, axis=-1) > tiny_a) & (np.linalg.norm(vb, axis=-1) > tiny_b)
        return cosine(va, vb) * ok

    point = cos(A[masks[0]].mean(0) - A[masks[1]].mean(0), B[masks[2]].mean(0) - B[masks[3]].mean(0))
    keys = [tuple(bool(x) for x in r) for r in M]
    strata = [np.array([i for i in range(n) if keys[i] == k]) for k in sorted(set(keys)) if any(k)]
    Af = A.reshape(n, rows * d).astype(np.float32)
    Bf = B.reshape(n, rows * d).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, rows))
    for c0 in range(0, n_boot, chunk):
        c = min(chunk, n_boot - c0)
        W = np.zeros((c, n))
        for idx in strata:
            draws = rng.integers(0, len(idx), size=(c, len(idx)))
            for j in range(c):
                W[j] += np.bincount(idx[draws[j]], minlength=n)
        sums = W @ M  # (c, 4): the resampled group sizes (fixed, kept for clarity)
        wa = (W * M[:, 0] / sums[:, 0:1]) - (W * M[:, 1] / sums[:, 1:2])
        wb = (W * M[:, 2] / sums[:, 2:3]) - (W * M[:, 3] / sums[:, 3:4])
        va = (wa.astype(np.float32) @ Af).reshape(c, rows, d).astype(np.float64)
        vb = (wb.astype(np.float32) @ Bf).reshape(c, rows, d).astype(np.float64)
        out[c0 : c0 + c] = cos(va, vb)
    lo, hi = np.quantile(out, [(1 - level) / 2, (1 + level) / 2], axis=0)
    groups = {"a_pos": int(masks[0].sum()), "a_neg": int(masks[1].sum())}
    groups.update({"b_pos": int(masks[2].sum()), "b_neg": int(masks[3].sum())})
    return CosineInterval(point, lo, hi, float(level), n_boot, int(seed), groups)
