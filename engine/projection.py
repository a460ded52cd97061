"""2-D projections of hidden states for the Clusters and Inspect pages: PCA (numpy SVD) and UMAP.

Contract:
- ``fit_projection(X, method, seed=0, n_neighbors=15)`` fits on ``X`` (n, d) and returns a :class:`Projection`
  whose ``embedding`` is (n, 2) float64 and whose ``transform(Y)`` places new points (m, d) into the same map
  (PCA: the fitted centring and axes; UMAP: ``UMAP.transform``).
- PCA is exact and deterministic: data are centred on the fitted mean, the axes are the top two right singular
  vectors, and each axis's sign is fixed so that its largest-magnitude loading is positive.
- UMAP is imported lazily (``umap-learn`` is heavy: numba JIT compiles on first use, ~23 s on 2 cores; the compiled
  code is kept in the user cache for later processes, ``engine.umapcache``) and run with a fixed ``random_state``
  (single-threaded, so reproducible) and ``n_neighbors`` capped at n - 1.
- Degenerate inputs do not crash: if every row is the same point (e.g. the embedding row at a template token,
  which is identical for every prompt) the embedding is all zeros and ``degenerate`` is True.
- Input is validated with ``ValueError`` (wrong shape, fewer than 3 points, NaN/inf); nothing here touches torch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["METHODS", "Projection", "fit_projection"]

METHODS: tuple[str, ...] = ("umap", "pca")
MIN_POINTS = 3


def _check(X: Any, what: str, width: int | None = None) -> np.ndarray:
    a = np.asarray(X, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (n, d) array, got shape {a.shape}")
    if width is not None and a.shape[1] != width:
        raise ValueError(f"{what} has width {a.shape[1]}, but the projection was fitted on width {width}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or inf")
    return a


@dataclass
class Projection:
    """A fitted 2-D map: ``embedding`` (n, 2) of the fitted points and ``transform`` for new ones."""

    method: str
    embedding: np.ndarray
    width: int
    seed: int = 0
    n_neighbors: int | None = None
    degenerate: bool = False
    explained: tuple[float, float] | None = None  # PCA: share of variance on each axis
    _mean: np.ndarray | None = field(default=None, repr=False)
    _axes: np.ndarray | None = field(default=None, repr=False)  # (2, d) for PCA
    _umap: Any = field(default=None, repr=False)

    def transform(self, Y: Any) -> np.ndarray:
        """Place new points (m, d) into the fitted map: (m, 2)."""
        y = _check(Y, "new points", self.width)
        if len(y) == 0:
            return np.zeros((0, 2))
        if self.degenerate:
            return np.zeros((len(y), 2))
        if self.method == "pca":
            if self._mean is None or self._axes is None:
                raise ValueError("this PCA projection was not fitted (use fit_projection)")
            return (y - self._mean) @ self._axes.T
        from .umapcache import run_with_recovery

        def place() -> np.ndarray:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.asarray(self._umap.transform(y.astype(np.float32)), dtype=np.float64)

        return run_with_recovery(place)


def _pca(X: np.ndarray, seed: int) -> Projection:
    mean = X.mean(axis=0)
    Xc = X - mean
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    axes = vt[:2]
    if axes.shape[0] < 2:  # d == 1
        axes = np.vstack([axes, np.zeros_like(axes)])
        s = np.concatenate([s, [0.0]])
    for k in range(2):
        j = int(np.argmax(np.abs(axes[k])))
        if axes[k, j] < 0:
            axes[k] = -axes[k]
    total = float((s**2).sum())
    explained = (float(s[0] ** 2 / total), float(s[1] ** 2 / total)) if total > 0 else (0.0, 0.0)
    return Projection("pca", Xc @ axes.T, X.shape[1], seed=seed, explained=explained, _mean=mean, _axes=axes)


def _umap(X: np.ndarray, seed: int, n_neighbors: int, min_dist: float) -> Projection:
    from .umapcache import import_umap, run_with_recovery

    try:
        umap = import_umap()  # lazy: heavy import, numba JIT (compiled code cached on disk: engine.umapcache)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError("UMAP needs the package umap-learn (pip install umap-learn); use PCA instead") from exc
    k = max(2, min(int(n_neighbors), len(X) - 1))
    reducer = umap.UMAP(n_neighbors=k, min_dist=min_dist, n_components=2, random_state=seed, n_jobs=1)

    def fit() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # n_jobs/random_state and small-n spectral warnings
            return reducer.fit_transform(X.astype(np.float32))

    emb = run_with_recovery(fit)
    return Projection("umap", np.asarray(emb, dtype=np.float64), X.shape[1], seed=seed, n_neighbors=k, _umap=reducer)


def fit_projection(
    X: Any, method: str = "pca", *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1
) -> Projection:
    """Fit a 2-D map of ``X`` (n, d) with ``method`` 'pca' or 'umap' (see module docstring)."""
    method = str(method).lower()
    if method not in METHODS:
        raise ValueError(f"projection method must be one of {METHODS}, not {method!r}")
    a = _check(X, "hidden states")
    if len(a) < MIN_POINTS:
        raise ValueError(f"a projection needs at least {MIN_POINTS} points, got {len(a)}")
    if isinstance(n_neighbors, bool) or int(n_neighbors) < 2:
        raise ValueError("n_neighbors must be an integer >= 2")
    spread = np.abs(a - a[0]).max()
    if not spread > 1e-9 * max(1.0, float(np.abs(a).max())):
        return Projection(method, np.zeros((len(a), 2)), a.shape[1], seed=seed, degenerate=True)
    if method == "pca":
        return _pca(a, seed)
    return _umap(a, seed, n_neighbors, min_dist)
