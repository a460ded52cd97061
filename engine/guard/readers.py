"""Trained readers of t_inst hidden states for the Latent Guard (beyond the paper's centroid rule).

Contract:
- Input: ``acts`` (n, L+1, d) hidden states at t_inst (row l = input of block l, see ``engine.capture``) and
  ``harmful`` (n,) booleans. Readers are fitted **only** on what they are given (the built-in train split, by the
  callers' discipline); everything chosen (layers, regularisation, features, the calibrated threshold) comes from
  stratified k-fold cross-validation inside that data, never from test or public sets.
- ``fit_reader(method, acts, harmful)`` with method
    * ``"lda"``: shrinkage LDA (Mahalanobis prototypes with a shared covariance shrunk towards a scaled identity) on
      one row or the concatenation of the ``top_k`` best rows;
    * ``"probe"``: L2 logistic regression (class-balanced) on standardised features, same row choice;
    * ``"lda-band"`` (:data:`BAND_METHOD`): one shrinkage LDA per row, each score divided by its within-class
      standard deviation (a per-row Mahalanobis margin), averaged over a band of rows; the band, the shrinkage and
      the features (raw or unit-norm rows: the centroid rule is scale-free, hidden-state norms vary with the last
      token) are chosen by CV. It tests averaging over layers instead of picking 1-3 rows; its choice is stable
      across folds (the upper third, unit-norm rows) but it is not better than ``probe`` under nested CV.
  Every reader is a :class:`LinearReader`: ``score(acts) = sum_l weights[l] . f(h_l) + bias`` with ``f`` the
  identity (``features="raw"``) or the unit-norm map (``"unit"``); harmful iff score >= threshold.
- Choice by CV: the candidate with the highest pooled out-of-fold AUC (ties: fewer rows, then lower row).
- ``centroid_cv`` gives the paper's centroid rule the same cross-validated threshold calibration.
- Thresholds: ``0`` (the natural decision rule of each reader: equal priors for LDA, p = 0.5 for the probe, the paper's
  rule for centroids) and ``threshold`` (calibrated): the midpoint threshold that maximises balanced accuracy on the
  pooled out-of-fold scores of the chosen candidate.
- A reader round-trips through a :class:`~engine.directions.DirectionSet` (``vectors`` = weights / ``scale``, ``meta``
  = bias, scale, features, layers, threshold, hyperparameters, CV figures), so it is stored in the directions bundle
  like any direction (also as float16: the weights are scaled to a maximum magnitude of 1 first).
- Deterministic for a given seed; float64 arithmetic; no scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..directions import DirectionSet, delta
from .metrics import auc, balanced_accuracy, calibrate_threshold

__all__ = [
    "BANDS",
    "BAND_METHOD",
    "READER_METHODS",
    "LinearReader",
    "auc",
    "balanced_accuracy",
    "calibrate_threshold",
    "centroid_cv",
    "fit_reader",
    "stratified_folds",
]

READER_METHODS = ("lda", "probe")
BAND_METHOD = "lda-band"
ALL_READERS = (*READER_METHODS, BAND_METHOD)
LDA_SHRINKAGES = (0.05, 0.2, 0.5, 0.8)
BAND_SHRINKAGES = (0.2, 0.5, 0.8, 0.95)
PROBE_L2 = (1e-3, 1e-2, 1e-1, 1.0)
FEATURES = ("raw", "unit")
N_FOLDS = 5
# bands as fractions of the depth (row 1 .. row L): the whole stack without the embeddings, the upper two thirds,
# the upper half, the upper third, the middle third
BANDS: dict[str, tuple[float, float]] = {
    "all": (0.0, 1.0),
    "upper-2/3": (1 / 3, 1.0),
    "upper-1/2": (0.5, 1.0),
    "upper-1/3": (2 / 3, 1.0),
    "middle-1/3": (1 / 3, 2 / 3),
}


def band_rows(name: str, n_rows: int) -> tuple[int, ...]:
    """Rows of band ``name`` for a model with ``n_rows`` = L+1 captured rows (never row 0, the embeddings)."""
    lo, hi = BANDS[name]
    top = n_rows - 1
    a = max(1, round(1 + lo * (top - 1)))
    b = max(a, round(1 + hi * (top - 1)))
    return tuple(range(a, b + 1))


def _unit(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.where(n > 0, n, 1.0)


@dataclass
class LinearReader:
    """A linear score over captured rows: ``sum_l weights[l] . f(h_l) + bias`` (``f``: see ``features``)."""

    name: str
    method: str
    weights: np.ndarray  # (L+1, d) float32, zero outside ``layers``
    bias: float
    layers: tuple[int, ...]
    threshold: float = 0.0  # calibrated (see module docstring); 0 is the natural rule
    hyper: dict[str, Any] = field(default_factory=dict)
    cv: dict[str, Any] = field(default_factory=dict)
    features: str = "raw"

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, not {self.features!r}")

    def score(self, acts: np.ndarray) -> np.ndarray:
        """(n,) float64 scores for ``acts`` (n, L+1, d)."""
        a = np.asarray(acts)
        if a.ndim != 3 or a.shape[1:] != self.weights.shape:
            raise ValueError(f"hidden states {a.shape} do not match this reader's {self.weights.shape}")
        rows = list(self.layers)
        x = a[:, rows].astype(np.float64)
        if self.features == "unit":
            x = _unit(x)
        w = self.weights[rows].astype(np.float64)
        return np.einsum("nld,ld->n", x, w) + float(self.bias)

    def info(self) -> dict[str, Any]:
        """What a report needs: method, features, layers, hyperparameters, calibrated threshold, CV figures."""
        return {
            "method": self.method,
            "features": self.features,
            "layers": list(self.layers),
            "threshold": float(self.threshold),
            "hyper": dict(self.hyper),
            "cv": dict(self.cv),
        }

    def to_direction_set(self) -> DirectionSet:
        w = np.asarray(self.weights, dtype=np.float64)
        scale = float(np.abs(w).max()) or 1.0
        return DirectionSet(
            name=f"guard:{self.method}",
            vectors=(w / scale).astype(np.float32),
            position="t_inst",
            meta={"kind": "guard_reader", "bias": float(self.bias), "scale": scale, **self.info()},
        )

    @classmethod
    def from_direction_set(cls, d: DirectionSet) -> LinearReader:
        m = d.meta
        if m.get("kind") != "guard_reader":
            raise ValueError(f"direction {d.name!r} is not a stored guard reader")
        scale = float(m.get("scale", 1.0))
        return cls(
            name=d.name,
            method=str(m["method"]),
            weights=(np.asarray(d.vectors, dtype=np.float64) * scale).astype(np.float32),
            bias=float(m["bias"]),
            layers=tuple(int(x) for x in m["layers"]),
            threshold=float(m.get("threshold", 0.0)),
            hyper=dict(m.get("hyper") or {}),
            cv=dict(m.get("cv") or {}),
            features=str(m.get("features", "raw")),
        )


def stratified_folds(truth: np.ndarray, k: int = N_FOLDS, seed: int = 0) -> list[np.ndarray]:
    """k disjoint test-index arrays, each with about the same share of both classes (seeded)."""
    y = np.asarray(truth, dtype=bool)
    if min(int(y.sum()), int((~y).sum())) < k:
        raise ValueError(f"need at least {k} examples of each class for {k}-fold cross-validation")
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for cls in (True, False):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[j % k].append(int(i))
    return [np.array(sorted(f)) for f in folds]


# ------------------------------------------------------------------------------------------------------ fitting
def _features(acts: np.ndarray, layers: Sequence[int], features: str = "raw") -> np.ndarray:
    x = np.asarray(acts[:, list(layers)], dtype=np.float64)
    if features == "unit":
        x = _unit(x)
    return x.reshape(len(acts), -1)


def _lda_path(x: np.ndarray, y: np.ndarray, shrinkages: Sequence[float]) -> list[tuple[np.ndarray, float, float]]:
    """Shrinkage LDA for several shrinkages from one SVD: [(w, b, sd)] with w = S^-1 (mu1 - mu0),
    b = -w . (mu1 + mu0) / 2, S = (1-a) pooled covariance + a (tr/p) I, and sd the within-class standard deviation
    of the projection x . w (the scale of a Mahalanobis margin).

    With the centred data X = xc / sqrt(n) = U diag(s) V^T: S = V diag((1-a) s^2 + c) V^T + c (I - V V^T),
    c = a tr / p, so S^-1 d = V ((1/((1-a) s^2 + c) - 1/c) * V^T d) + d / c. With V = X^T U diag(1/s) that is
    S^-1 d = X^T U (g * U^T X d) + d / c, g = -(1-a) / (c ((1-a) s^2 + c)): only the (n, n) Gram matrix X X^T =
    U diag(s^2) U^T is decomposed (eigh), no division by s, and directions with s = 0 drop out (X^T U is zero
    there); with more prompts than features X^T X = V diag(s^2) V^T is decomposed instead. With far fewer prompts
    than features (275 x 896 per fold and row) this is ~10x faster than the SVD of
    X it replaces and agrees with it to float64 rounding (tests/test_guard_readers.py)."""
    mu1, mu0 = x[y].mean(0), x[~y].mean(0)
    xc = np.concatenate([x[y] - mu1, x[~y] - mu0])
    p = x.shape[1]
    n = max(len(x) - 2, 1)
    X = xc / np.sqrt(n)
    dual = X.shape[0] < p  # decompose the smaller of X X^T (n, n) and X^T X (p, p)
    s2, u = np.linalg.eigh(X @ X.T if dual else X.T @ X)  # u: U (dual) or V (primal)
    s2 = np.clip(s2, 0.0, None)  # positive semi-definite; rounding can leave -1e-16
    tr = float(np.einsum("ij,ij->", X, X))
    diff = mu1 - mu0
    proj = u.T @ (X @ diff if dual else diff)
    out = []
    for a in shrinkages:
        if not 0.0 < float(a) <= 1.0:
            raise ValueError(f"shrinkage must be in (0, 1], got {a!r}")
        c = float(a) * tr / p
        if c <= 0:
            raise ValueError("the training states have no variance; cannot fit an LDA reader")
        if dual:
            w = X.T @ (u @ (-(1.0 - a) / (c * ((1.0 - a) * s2 + c)) * proj)) + diff / c
        else:
            w = u @ ((1.0 / ((1.0 - a) * s2 + c) - 1.0 / c) * proj) + diff / c
        b = float(-w @ (mu1 + mu0) / 2.0)
        sd = float(np.sqrt(((xc @ w) ** 2).sum() / n))
        out.append((w, b, sd if sd > 0 else 1.0))
    return out


def _fit_lda(x: np.ndarray, y: np.ndarray, shrinkage: float) -> tuple[np.ndarray, float]:
    """w = S^-1 (mu1 - mu0), b = -w . (mu1 + mu0) / 2 with S = (1-a) pooled covariance + a (tr/p) I."""
    w, b, _ = _lda_path(x, y, [shrinkage])[0]
    return w, b


def _fit_probe(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """L2 logistic regression on standardised features (LBFGS, float64); returns raw-feature weights and bias."""
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    xs = torch.as_tensor((x - mean) / std, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    pos_w = float((~y).sum()) / max(float(y.sum()), 1.0)  # balance the classes
    weight = torch.where(yt > 0, torch.tensor(pos_w, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    w = torch.zeros(xs.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")
    norm = float(weight.sum())

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = xs @ w + b
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, weight=weight, reduction="sum") / norm
        ) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    wn = w.detach().numpy() / std
    return wn, float(b.detach()) - float(wn @ mean)


@dataclass(frozen=True)
class _Candidate:
    rows: tuple[int, ...]
    hyper: float
    features: str = "raw"
    band: str | None = None


def _fit(method: str, acts: np.ndarray, y: np.ndarray, c: _Candidate) -> tuple[np.ndarray, float]:
    """Weights (len(rows) * d,) over the candidate's rows (in feature space) and the bias, on all of ``acts``."""
    if method == "lda":
        return _fit_lda(_features(acts, c.rows, c.features), y, c.hyper)
    if method == "probe":
        return _fit_probe(_features(acts, c.rows, c.features), y, c.hyper)
    ws, bs = [], []
    for r in c.rows:  # lda-band: per-row Mahalanobis margins, averaged
        w, b, sd = _lda_path(_features(acts, [r], c.features), y, [c.hyper])[0]
        ws.append(w / (sd * len(c.rows)))
        bs.append(b / (sd * len(c.rows)))
    return np.concatenate(ws), float(sum(bs))


def _oof(
    method: str,
    acts: np.ndarray,
    y: np.ndarray,
    rows: Sequence[int],
    grid: Sequence[float],
    features: str,
    folds: list[np.ndarray],
    standardise: bool = False,
) -> dict[float, np.ndarray]:
    """Out-of-fold scores of one row set for every value of the grid (LDA: one SVD per fold for the whole grid)."""
    out = {h: np.zeros(len(y), dtype=np.float64) for h in grid}
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        x_tr, x_te = _features(acts[train], rows, features), _features(acts[test], rows, features)
        if method == "probe":
            for h in grid:
                w, b = _fit_probe(x_tr, y[train], h)
                out[h][test] = x_te @ w + b
            continue
        for h, (w, b, sd) in zip(grid, _lda_path(x_tr, y[train], grid), strict=True):
            out[h][test] = (x_te @ w + b) / (sd if standardise else 1.0)
    return out


def _candidates(
    method: str,
    acts: np.ndarray,
    y: np.ndarray,
    cand_rows: list[int],
    grid: tuple[float, ...],
    fold_idx: list[np.ndarray],
    top_k: int,
) -> list[tuple[float, _Candidate, np.ndarray]]:
    """Every candidate with its pooled out-of-fold AUC and scores."""
    results: list[tuple[float, _Candidate, np.ndarray]] = []
    if method == BAND_METHOD:
        n_rows = acts.shape[1]
        bands = {k: tuple(r for r in band_rows(k, n_rows) if r in cand_rows) for k in BANDS}
        bands = {k: v for k, v in bands.items() if v}
        needed = sorted({r for v in bands.values() for r in v})
        for feat in FEATURES:
            per_row = {r: _oof("lda", acts, y, [r], grid, feat, fold_idx, standardise=True) for r in needed}
            for band, rows in bands.items():
                for h in grid:
                    s = np.mean([per_row[r][h] for r in rows], axis=0)
                    results.append((auc(s, y), _Candidate(rows, h, feat, band), s))
        return results
    for r in cand_rows:
        for h, s in _oof(method, acts, y, [r], grid, "raw", fold_idx).items():
            results.append((auc(s, y), _Candidate((r,), h), s))
    singles = sorted(results, key=lambda t: (-t[0], t[1].rows[0], t[1].hyper))
    if top_k > 1 and len(cand_rows) > 1:
        best_rows: list[int] = []
        for res in singles:
            if res[1].rows[0] not in best_rows:
                best_rows.append(res[1].rows[0])
            if len(best_rows) == top_k:
                break
        combo = tuple(sorted(best_rows))
        for h, s in _oof(method, acts, y, combo, grid, "raw", fold_idx).items():
            results.append((auc(s, y), _Candidate(combo, h), s))
    return results


def fit_reader(
    method: str,
    acts: np.ndarray,
    harmful: Sequence[bool] | np.ndarray,
    *,
    layers: Sequence[int] | None = None,
    hypers: Sequence[float] | None = None,
    folds: int = N_FOLDS,
    seed: int = 0,
    top_k: int = 3,
) -> LinearReader:
    """Choose the candidate by k-fold CV (pooled out-of-fold AUC), calibrate the threshold on its out-of-fold scores,
    refit on all of ``acts``. ``lda`` / ``probe`` candidates: every single row in ``layers`` (default 1..L) x the
    regularisation grid, and the concatenation of the ``top_k`` best single rows; ``lda-band``: every band of
    :data:`BANDS` (restricted to ``layers``) x shrinkage x features."""
    if method not in ALL_READERS:
        raise ValueError(f"reader method must be one of {ALL_READERS}, not {method!r}")
    a = np.asarray(acts)
    y = np.asarray(harmful, dtype=bool)
    if a.ndim != 3 or len(a) != len(y):
        raise ValueError(f"acts must be (n, L+1, d) with one label per prompt; got {a.shape} and {len(y)} labels")
    n_rows = a.shape[1]
    cand_rows = list(range(1, n_rows)) if layers is None else [int(r) for r in layers]
    if not cand_rows or min(cand_rows) < 0 or max(cand_rows) >= n_rows:
        raise ValueError(f"layers must be within 0..{n_rows - 1}")
    default_grid = {"lda": LDA_SHRINKAGES, "probe": PROBE_L2, BAND_METHOD: BAND_SHRINKAGES}[method]
    grid = tuple(hypers) if hypers is not None else default_grid
    fold_idx = stratified_folds(y, folds, seed)
    results = _candidates(method, a, y, cand_rows, grid, fold_idx, top_k)
    if not results:
        raise ValueError("no candidate rows for this reader")
    cv_auc, best, oof = max(results, key=lambda t: (t[0], -len(t[1].rows), -t[1].rows[0]))
    w, b = _fit(method, a, y, best)
    weights = np.zeros(a.shape[1:], dtype=np.float32)
    weights[list(best.rows)] = w.reshape(len(best.rows), a.shape[2]).astype(np.float32)
    thr = calibrate_threshold(oof, y)
    hyper_name = "l2" if method == "probe" else "shrinkage"
    hyper: dict[str, Any] = {hyper_name: best.hyper, "folds": folds, "seed": seed, "grid": list(grid)}
    if method == BAND_METHOD:
        hyper["band"] = best.band
        hyper["bands"] = {k: list(band_rows(k, n_rows)) for k in BANDS}
    cv: dict[str, Any] = {
        "auc": round(cv_auc, 5),
        "balanced_accuracy_at_0": round(balanced_accuracy(oof >= 0, y), 5),
        "balanced_accuracy_at_threshold": round(balanced_accuracy(oof >= thr, y), 5),
        "n": len(y),
        "n_harmful": int(y.sum()),
        "n_candidates": len(results),
        "oof_range": [round(float(np.quantile(oof, 0.01)), 5), round(float(np.quantile(oof, 0.99)), 5)],
    }
    if method == BAND_METHOD:
        cv["auc_per_candidate"] = {
            f"{c.band}/{c.features}/{c.hyper:g}": round(s, 5) for s, c, _ in results if c.features == best.features
        }
    else:
        cv["auc_per_row"] = {
            str(c.rows[0]): round(s, 5) for s, c, _ in results if len(c.rows) == 1 and c.hyper == best.hyper
        }
    return LinearReader(
        name=f"guard:{method}",
        method=method,
        weights=weights,
        bias=b,
        layers=best.rows,
        threshold=thr,
        hyper=hyper,
        cv=cv,
        features=best.features,
    )


def centroid_cv(
    acts: np.ndarray, harmful: Sequence[bool] | np.ndarray, *, folds: int = N_FOLDS, seed: int = 0
) -> dict[str, float]:
    """The paper's centroid rule under the same CV: out-of-fold Delta_harmful, its AUC and calibrated threshold."""
    a = np.asarray(acts)
    y = np.asarray(harmful, dtype=bool)
    oof = np.zeros(len(y), dtype=np.float64)
    for test in stratified_folds(y, folds, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        mu1, mu0 = a[train][y[train]].mean(0), a[train][~y[train]].mean(0)
        oof[test] = delta(a[test], mu1, mu0)
    thr = calibrate_threshold(oof, y)
    return {
        "threshold": thr,
        "auc": auc(oof, y),
        "balanced_accuracy_at_0": balanced_accuracy(oof >= 0, y),
        "balanced_accuracy_at_threshold": balanced_accuracy(oof >= thr, y),
    }
