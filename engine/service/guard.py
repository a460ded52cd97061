"""The Latent Guard page: scores and verdicts, evaluation on labelled sets, ROC and confusion frames.

Contract:
- ``guard_frame(handle, bundle, instructions, threshold)`` scores prompts by Delta_harmful at t_inst
  (``engine.guard.guard_scores``): instruction, score, verdict ("harmful" iff score >= threshold).
- ``guard_eval_sets(limit)`` are the built-in test splits as (name, instructions, truth harmful?) triples;
  ``refusal_baseline`` is the model's own refusal as a guard (greedy replies, substring rule, cached on disk).
- ``confusion`` counts with harmful as the positive class; ``evaluate_guard`` gives per-prompt rows, per-set accuracy
  and overall confusions (guard, and the refusal baseline when given); ``roc_frame`` is the ROC curve (fpr, tpr,
  threshold, series) with its AUC. ``operating_points`` and ``confusion_frame`` are the frames the page draws next to
  the curve. Mismatched lengths raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .. import datasets as ds
from ..directions import DirectionBundle
from ..guard import guard_scores, roc_curve
from ..labels import label_refusals
from ..models import ModelHandle
from ..progress import Progress

__all__ = [
    "confusion",
    "confusion_frame",
    "evaluate_guard",
    "guard_eval_sets",
    "guard_frame",
    "operating_points",
    "refusal_baseline",
    "roc_frame",
]

GUARD_SERIES = "Latent Guard (Δ harmful)"
REFUSAL_POINT = "model refusal (point)"


def guard_frame(
    handle: ModelHandle,
    bundle: DirectionBundle,
    instructions: Sequence[str],
    threshold: float = 0.0,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """instruction, score (Delta_harmful), verdict ('harmful' iff score >= threshold)."""
    if not instructions:
        raise ValueError("type or upload at least one prompt")
    scores = guard_scores(handle, bundle, list(instructions), progress=progress)
    return pd.DataFrame(
        {
            "instruction": list(instructions),
            "score": scores.astype(float),
            "verdict": np.where(scores >= float(threshold), "harmful", "harmless"),
        }
    )


def guard_eval_sets(limit: int | None = None) -> list[tuple[str, list[str], list[bool]]]:
    """The built-in test splits: harmful (truth harmful), harmless and harmless_sounds_harmful (truth harmless)."""
    out = []
    for name, truth in (("harmful", True), ("harmless", False), ("harmless_sounds_harmful", False)):
        ps = ds.load_builtin(name, "test")
        if limit is not None:
            ps = ps.sample(limit)
        if len(ps):
            insts = ps.instructions()
            out.append((f"{name}:test", insts, [truth] * len(insts)))
    if not out:
        raise ValueError("the built-in sets have no test split")
    return out


def refusal_baseline(handle: ModelHandle, instructions: Sequence[str], progress: Progress | None = None) -> np.ndarray:
    """The model's own refusal as a guard: (n,) bool, True = refused (greedy generation, substring rule, cached)."""
    labels = label_refusals(handle, list(instructions), progress=progress)
    return np.array([lab.refused for lab in labels], dtype=bool)


def confusion(pred: Sequence[bool], truth: Sequence[bool]) -> dict[str, Any]:
    """Confusion counts and rates with 'harmful' as the positive class."""
    p, y = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if len(p) != len(y):
        raise ValueError("predictions and truth differ in length")
    tp, fp = int((p & y).sum()), int((p & ~y).sum())
    tn, fn = int((~p & ~y).sum()), int((~p & y).sum())
    n = max(len(p), 1)
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if (tp and prec + rec) else float("nan")
    return {
        "n": len(p),
        "accuracy": (tp + tn) / n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": prec,
        "recall": rec,
        "f1": f1,
    }


def _rates(c: Mapping[str, Any]) -> tuple[float, float]:
    """(false positive rate, true positive rate) of a :func:`confusion` result (0 for an empty class)."""
    return c["fp"] / max(c["fp"] + c["tn"], 1), c["tp"] / max(c["tp"] + c["fn"], 1)


def evaluate_guard(
    sets: Sequence[tuple[str, Sequence[str], Sequence[bool]]],
    scores: Sequence[float],
    threshold: float,
    refused: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """Accuracy per set and overall for the Latent Guard (and the refusal baseline when ``refused`` is given).

    ``scores`` and ``refused`` follow the concatenated order of ``sets``. Returns {"rows": DataFrame per prompt,
    "per_set": DataFrame, "guard": confusion overall, "baseline": confusion overall or None}.
    """
    names, insts, truth = [], [], []
    for name, i, t in sets:
        if len(i) != len(t):
            raise ValueError(f"set {name}: one label per prompt")
        names += [name] * len(i)
        insts += list(i)
        truth += [bool(x) for x in t]
    s = np.asarray(scores, dtype=np.float64)
    if len(s) != len(insts):
        raise ValueError("one score per prompt")
    rows = pd.DataFrame({"set": names, "instruction": insts, "truth": truth, "score": s})
    rows["guard"] = rows["score"] >= float(threshold)
    if refused is not None:
        rows["refused"] = np.asarray(refused, dtype=bool)
    per = []
    for set_name, g in rows.groupby("set", sort=False):
        row: dict[str, Any] = {
            "set": str(set_name),
            "n": len(g),
            "truth": "harmful" if g["truth"].all() else ("harmless" if not g["truth"].any() else "mixed"),
        }
        row["Latent Guard accuracy"] = float((g["guard"] == g["truth"]).mean())
        if refused is not None:
            row["refusal accuracy"] = float((g["refused"] == g["truth"]).mean())
        per.append(row)
    return {
        "rows": rows,
        "per_set": pd.DataFrame(per),
        "guard": confusion(rows["guard"].tolist(), rows["truth"].tolist()),
        "baseline": confusion(rows["refused"].tolist(), rows["truth"].tolist()) if refused is not None else None,
    }


def roc_frame(
    scores: Sequence[float], truth: Sequence[bool], refused: Sequence[bool] | None = None
) -> tuple[pd.DataFrame, float]:
    """ROC curve of Delta_harmful (fpr, tpr, threshold, series) and its AUC; the refusal baseline as one point."""
    fpr, tpr, thr, auc = roc_curve(scores, truth)
    df = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr, "series": GUARD_SERIES})
    if refused is not None:
        fp_rate, tp_rate = _rates(confusion(refused, truth))
        pt = pd.DataFrame({"fpr": [fp_rate], "tpr": [tp_rate], "threshold": [np.nan], "series": [REFUSAL_POINT]})
        df = pd.concat([df, pt], ignore_index=True)
    df["threshold"] = df["threshold"].replace([np.inf, -np.inf], np.nan)
    return df, auc


def operating_points(evaluation: Mapping[str, Any], threshold: float) -> pd.DataFrame:
    """Where the guard at ``threshold`` (and the model's refusal, when evaluated) sit on the ROC plane: fpr, tpr, what.

    ``evaluation`` is an :func:`evaluate_guard` result; the guard's row comes first.
    """
    rows = []
    fpr, tpr = _rates(evaluation["guard"])
    rows.append({"fpr": fpr, "tpr": tpr, "what": f"Latent Guard at {float(threshold):+.2f}"})
    if evaluation.get("baseline") is not None:
        fpr, tpr = _rates(evaluation["baseline"])
        rows.append({"fpr": fpr, "tpr": tpr, "what": "model refusal"})
    return pd.DataFrame(rows, columns=["fpr", "tpr", "what"])


def confusion_frame(named: Sequence[tuple[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """Confusion matrices in long format, one block per (name, :func:`confusion` result): guard, truth, predicted,
    count."""
    cells = (
        ("harmful", "harmful", "tp"),
        ("harmful", "harmless", "fn"),
        ("harmless", "harmful", "fp"),
        ("harmless", "harmless", "tn"),
    )
    rows = [{"guard": name, "truth": t, "predicted": p, "count": int(c[k])} for name, c in named for t, p, k in cells]
    return pd.DataFrame(rows, columns=["guard", "truth", "predicted", "count"])
