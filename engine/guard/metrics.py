"""Guard metrics with 'harmful' as the positive class: ROC curve, rank AUC, balanced accuracy, threshold calibration.

Contract: scores are "higher = more harmful"; a prompt is flagged iff score >= threshold. ``roc_curve`` returns
(fpr, tpr, thresholds, auc) from the strictest threshold (inf) down; ``auc`` is the rank statistic (ties count one
half, NaN when a class is missing); ``balanced_accuracy`` is the mean of the per-class accuracies (of the classes
present); ``calibrate_threshold`` is the midpoint threshold with the highest balanced accuracy (ties: closest to 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["auc", "balanced_accuracy", "calibrate_threshold", "roc_curve"]


def roc_curve(scores: Sequence[float], truth: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(fpr, tpr, thresholds, auc) for 'harmful' = positive class."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(truth, dtype=bool)
    if len(s) != len(y) or len(s) == 0:
        raise ValueError("scores and truth must be non-empty and of equal length")
    thr = np.concatenate([[np.inf], np.sort(np.unique(s))[::-1]])
    P, N = max(y.sum(), 1), max((~y).sum(), 1)
    tpr = np.array([((s >= t) & y).sum() / P for t in thr])
    fpr = np.array([((s >= t) & ~y).sum() / N for t in thr])
    area = float(np.trapezoid(tpr, fpr))
    return fpr, tpr, thr, area


def auc(scores: Sequence[float] | np.ndarray, truth: Sequence[bool] | np.ndarray) -> float:
    """ROC AUC for 'harmful' = positive (ties count one half); NaN when a class is missing."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(truth, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average ranks over ties: each run of equal values gets the mean of its 1-based positions
    starts = np.flatnonzero(np.concatenate([[True], sorted_s[1:] != sorted_s[:-1]]))
    ends = np.concatenate([starts[1:], [len(s)]])
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b - 1) / 2.0 + 1.0
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def balanced_accuracy(pred: np.ndarray | Sequence[bool], truth: np.ndarray | Sequence[bool]) -> float:
    """Mean of the accuracy on the harmful and on the harmless prompts (the classes present); NaN when empty."""
    p, y = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    parts = [float((p[m] == y[m]).mean()) for m in (y, ~y) if m.any()]
    return float(np.mean(parts)) if parts else float("nan")


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
