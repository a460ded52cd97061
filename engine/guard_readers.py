"""Trained readers of t_inst hidden states for the Latent Guard (beyond the paper's centroid rule).

Contract:
- Input: ``acts`` (n, L+1, d) hidden states at t_inst (row l = input of block l, see ``engine.capture``) and
  ``harmful`` (n,) booleans. Readers are fitted **only** on what they are given (the built-in train split, by the
  callers' discipline); everything chosen (layers, regularisation, the calibrated threshold) comes from stratified
  k-fold cross-validation inside that data, never from test or public sets.
- ``fit_reader(method, acts, harmful)`` with method ``"lda"`` (shrinkage LDA = Mahalanobis prototypes with a shared,
  shrunk covariance) or ``"probe"`` (L2 logistic regression on standardised features) returns a
  :class:`LinearReader`: ``score(acts) = sum_l weights[l] . h_l + bias`` (harmful iff score >= threshold).
  ``centroid_cv`` gives the paper's centroid rule the same cross-validated threshold calibration.
- Thresholds: ``0`` (the natural decision rule of each reader: equal priors for LDA, p = 0.5 for the probe, the paper's
  rule for centroids) and ``threshold`` (calibrated): the midpoint threshold that maximises balanced accuracy on the
  pooled out-of-fold scores.
- A reader round-trips through a :class:`~engine.directions.DirectionSet` (``vectors`` = weights, ``meta`` = bias,
  layers, threshold, hyperparameters, CV figures), so it is stored in the directions bundle like any direction.
- Deterministic for a given seed; float64 arithmetic; no scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .directions import DirectionSet, delta

__all__ = [
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
LDA_SHRINKAGES = (0.05, 0.2, 0.5, 0.8)
PROBE_L2 = (1e-3, 1e-2, 1e-1, 1.0)
N_FOLDS = 5


@dataclass
class LinearReader:
    """A linear score over captured rows: ``sum_l weights[l] . h_l + bias``."""

    name: str
    method: str
    weights: np.ndarray  # (L+1, d) float32, zero outside ``layers``
    bias: float
    layers: tuple[int, ...]
    threshold: float = 0.0  # calibrated (see module docstring); 0 is the natural rule
    hyper: dict[str, Any] = field(default_factory=dict)
    cv: dict[str, Any] = field(default_factory=dict)

    def score(self, acts: np.ndarray) -> np.ndarray:
        """(n,) float64 scores for ``acts`` (n, L+1, d)."""
        a = np.asarray(acts)
        if a.ndim != 3 or a.shape[1:] != self.weights.shape:
            raise ValueError(f"hidden states {a.shape} do not match this reader's {self.weights.shape}")
        rows = list(self.layers)
        w = self.weights[rows].astype(np.float64)
        return np.einsum("nld,ld->n", a[:, rows].astype(np.float64), w) + float(self.bias)

    def to_direction_set(self) -> DirectionSet:
        return DirectionSet(
            name=self.name,
            vectors=self.weights,
            position="t_inst",
            meta={
                "kind": "guard_reader",
                "method": self.method,
                "bias": float(self.bias),
                "layers": list(self.layers),
                "threshold": float(self.threshold),
                "hyper": dict(self.hyper),
                "cv": dict(self.cv),
            },
        )

    @classmethod
    def from_direction_set(cls, d: DirectionSet) -> LinearReader:
        m = d.meta
        if m.get("kind") != "guard_reader":
            raise ValueError(f"direction {d.name!r} is not a stored guard reader")
        return cls(
            name=d.name,
            method=str(m["method"]),
            weights=np.asarray(d.vectors, dtype=np.float32),
            bias=float(m["bias"]),
            layers=tuple(int(x) for x in m["layers"]),
            threshold=float(m.get("threshold", 0.0)),
            hyper=dict(m.get("hyper") or {}),
            cv=dict(m.get("cv") or {}),
        )


# ------------------------------------------------------------------------------------------------------- metrics
def auc(scores: Sequence[float] | np.ndarray, truth: Sequence[bool] | np.ndarray) -> float:
    """ROC AUC for 'harmful' = positive (ties count one half); NaN when a class is missing."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(truth, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def balanced_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    p, y = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    parts = [float((p[y] == y[y]).mean()) if y.any() else None, float((p[~y] == y[~y]).mean()) if (~y).any() else None]
    got = [x for x in parts if x is not None]
    return float(np.mean(got)) if got else float("nan")


def calibrate_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """Midpoint threshold with the highest balanced accuracy (ties: the one closest to 0)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(truth, dtype=bool)
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1.0]]) if len(u) > 1 else np.array([u[0]])
    best, best_t = -1.0, 0.0
    for t in cands:
        ba = balanced_accuracy(s >= t, y)
        if ba > best + 1e-12 or (abs(ba - best) <= 1e-12 and abs(t) < abs(best_t)):
            best, best_t = ba, float(t)
    return best_t


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
def _features(acts: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    return np.asarray(acts[:, list(layers)], dtype=np.float64).reshape(len(acts), -1)


def _fit_lda(x: np.ndarray, y: np.ndarray, shrinkage: float) -> tuple[np.ndarray, float]:
    """w = S^-1 (mu1 - mu0), b = -w . (mu1 + mu0) / 2 with S = (1-a) pooled covariance + a (tr/p) I."""
    mu1, mu0 = x[y].mean(0), x[~y].mean(0)
    xc = np.concatenate([x[y] - mu1, x[~y] - mu0])
    p = x.shape[1]
    n = max(len(x) - 2, 1)
    if p > len(x):  # Woodbury: S = c I + U U^T with U = sqrt((1-a)/n) xc^T, rank <= n
        tr = float((xc * xc).sum()) / n
        c = shrinkage * tr / p
        u = xc.T * np.sqrt((1.0 - shrinkage) / n)  # (p, m)
        diff = mu1 - mu0
        inner = np.eye(u.shape[1]) + (u.T @ u) / c
        w = diff / c - u @ np.linalg.solve(inner, u.T @ diff) / (c * c)
    else:
        cov = (xc.T @ xc) / n
        cov = (1.0 - shrinkage) * cov + shrinkage * np.trace(cov) / p * np.eye(p)
        w = np.linalg.solve(cov, mu1 - mu0)
    return w, float(-w @ (mu1 + mu0) / 2.0)


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


def _fit(method: str, x: np.ndarray, y: np.ndarray, hyper: float) -> tuple[np.ndarray, float]:
    return _fit_lda(x, y, hyper) if method == "lda" else _fit_probe(x, y, hyper)


def _oof_scores(
    method: str, acts: np.ndarray, y: np.ndarray, layers: Sequence[int], hyper: float, folds: list[np.ndarray]
) -> np.ndarray:
    out = np.zeros(len(y), dtype=np.float64)
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        w, b = _fit(method, _features(acts[train], layers), y[train], hyper)
        out[test] = _features(acts[test], layers) @ w + b
    return out


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
    """Choose layers and regularisation by k-fold CV (pooled out-of-fold AUC), calibrate the threshold on the
    out-of-fold scores, refit on all of ``acts``. Candidates: every single row in ``layers`` (default 1..L) and the
    concatenation of the ``top_k`` best single rows."""
    if method not in READER_METHODS:
        raise ValueError(f"reader method must be one of {READER_METHODS}, not {method!r}")
    a = np.asarray(acts)
    y = np.asarray(harmful, dtype=bool)
    if a.ndim != 3 or len(a) != len(y):
        raise ValueError(f"acts must be (n, L+1, d) with one label per prompt; got {a.shape} and {len(y)} labels")
    n_rows = a.shape[1]
    cand_rows = list(range(1, n_rows)) if layers is None else [int(r) for r in layers]
    if not cand_rows or min(cand_rows) < 0 or max(cand_rows) >= n_rows:
        raise ValueError(f"layers must be within 0..{n_rows - 1}")
    grid = tuple(hypers) if hypers is not None else (LDA_SHRINKAGES if method == "lda" else PROBE_L2)
    fold_idx = stratified_folds(y, folds, seed)
    results: list[tuple[float, tuple[int, ...], float, np.ndarray]] = []
    for r in cand_rows:
        for h in grid:
            s = _oof_scores(method, a, y, [r], h, fold_idx)
            results.append((auc(s, y), (r,), h, s))
    singles = sorted(results, key=lambda t: (-t[0], t[1][0], t[2]))
    if top_k > 1 and len(cand_rows) > 1:
        best_rows = []
        for res in singles:
            if res[1][0] not in best_rows:
                best_rows.append(res[1][0])
            if len(best_rows) == top_k:
                break
        combo = tuple(sorted(best_rows))
        for h in grid:
            s = _oof_scores(method, a, y, combo, h, fold_idx)
            results.append((auc(s, y), combo, h, s))
    best = max(results, key=lambda t: (t[0], -len(t[1]), -t[1][0]))
    cv_auc, rows, hyper, oof = best
    w, b = _fit(method, _features(a, rows), y, hyper)
    weights = np.zeros(a.shape[1:], dtype=np.float32)
    weights[list(rows)] = w.reshape(len(rows), a.shape[2]).astype(np.float32)
    thr = calibrate_threshold(oof, y)
    per_row = {}
    for res in results:
        if len(res[1]) == 1 and res[2] == hyper:
            per_row[str(res[1][0])] = round(res[0], 5)
    return LinearReader(
        name=f"guard:{method}",
        method=method,
        weights=weights,
        bias=b,
        layers=rows,
        threshold=thr,
        hyper={"shrinkage" if method == "lda" else "l2": hyper, "folds": folds, "seed": seed, "grid": list(grid)},
        cv={
            "auc": round(cv_auc, 5),
            "balanced_accuracy_at_0": round(balanced_accuracy(oof >= 0, y), 5),
            "balanced_accuracy_at_threshold": round(balanced_accuracy(oof >= thr, y), 5),
            "auc_per_row": per_row,
            "n": len(y),
            "n_harmful": int(y.sum()),
        },
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
