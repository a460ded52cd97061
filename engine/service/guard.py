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
- Methods (``engine.guard``): ``guard_frame(..., method=)`` scores with any method; ``method_labels`` names them;
  ``available_methods`` says which can score now without fitting anything (``centroid`` always; the trained
  readers when the bundle stores them or the cache has them); ``guard_method_info`` resolves one (fitting missing
  readers once on the built-in train split when ``fit``); ``threshold_range`` is a slider range for its scores;
  ``method_scores`` captures once and scores with several methods; ``roc_frames`` / ``method_points`` /
  ``per_source_frame`` are the multi-method ROC curves, operating points and per-source accuracy table.
- Bounded runs (``engine.service.limits``): ``method_scores_bounded`` / ``refusal_baseline_bounded`` work in chunks
  of ``limits.CHUNK`` prompts under one ``limits.Budget`` and return what they finished (prompts done, stopped?);
  ``truncate_sets`` cuts evaluation sets to the first n prompts, so a stopped evaluation keeps its partial result.
- ``gated_side_by_side`` is guard-gated steering for the Steer page: per row the guard's score and verdict, whether
  the row was steered, the baseline and the gated text (``engine.guard.gated_side_by_side``: one batched generate).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .. import datasets as ds
from ..directions import DirectionBundle
from ..guard import (
    DEFAULT_METHOD,
    METHODS,
    GuardMethod,
    guard_methods,
    guard_readers,
    guard_scores,
    roc_curve,
    t_inst_states,
)
from ..guard import gated_side_by_side as _gated_side_by_side
from ..labels import label_refusals
from ..models import ModelHandle
from ..progress import Progress
from ..steering import GenerationConfig, SteeringSpec
from .limits import Budget, run_chunked

__all__ = [
    "GUARD_METHODS",
    "available_methods",
    "confusion",
    "confusion_frame",
    "evaluate_guard",
    "gated_side_by_side",
    "guard_eval_sets",
    "guard_frame",
    "guard_method_info",
    "method_label",
    "method_points",
    "method_scores",
    "method_scores_bounded",
    "operating_points",
    "per_source_frame",
    "refusal_baseline",
    "refusal_baseline_bounded",
    "roc_frame",
    "roc_frames",
    "threshold_range",
    "truncate_sets",
]

GUARD_SERIES = "Latent Guard (Δ harmful)"
REFUSAL_POINT = "model refusal (point)"
GUARD_METHODS: tuple[str, ...] = METHODS
_LABELS = {
    "centroid": "centroid (paper: Δ harmful)",
    "lda": "shrinkage LDA",
    "probe": "logistic probe",
    "lda-band": "band-averaged LDA",
}


def method_label(method: str) -> str:
    """Display name of a guard method."""
    return _LABELS.get(method, method)


def guard_frame(
    handle: ModelHandle,
    bundle: DirectionBundle,
    instructions: Sequence[str],
    threshold: float = 0.0,
    progress: Progress | None = None,
    method: str = DEFAULT_METHOD,
    normalize: bool | None = None,
) -> pd.DataFrame:
    """instruction, score (``centroid``: Delta_harmful), verdict ('harmful' iff score >= threshold). Prompts are
    normalised like the bundle's unless ``normalize is False`` (scored exactly as given)."""
    if not instructions:
        raise ValueError("type or upload at least one prompt")
    scores = guard_scores(handle, bundle, list(instructions), progress=progress, method=method, normalize=normalize)
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


# ------------------------------------------------------------------------------------------------ methods
def available_methods(handle: ModelHandle, bundle: DirectionBundle) -> dict[str, bool]:
    """Which methods can score now without fitting anything (readers stored in the bundle or cached)."""
    try:
        guard_readers(bundle, handle, fit=False)
        have = True
    except ValueError:
        have = False
    return {m: (m == "centroid" or have) for m in METHODS}


def guard_method_info(
    handle: ModelHandle, bundle: DirectionBundle, method: str, *, fit: bool = True, progress: Progress | None = None
) -> GuardMethod:
    """The named guard (its thresholds, provenance); missing readers are fitted once when ``fit``."""
    return guard_methods(bundle, [method], handle=handle, fit=fit, progress=progress)[method]


def threshold_range(g: GuardMethod) -> tuple[float, float, float]:
    """(low, high, step) of a threshold slider for ``g``'s scores: +-0.5 for the paper's Δ harmful, else the spread
    of the training prompts' out-of-fold scores (stored with the reader) widened to include 0 and the calibrated
    threshold."""
    if g.name == "centroid":
        return -0.5, 0.5, 0.01
    spread = (g.info.get("cv") or {}).get("oof_range")
    lo, hi = (float(spread[0]), float(spread[1])) if spread else (-5.0, 5.0)
    cal = g.calibrated if g.calibrated is not None else 0.0
    lo, hi = min(lo, cal, 0.0), max(hi, cal, 0.0)
    span = hi - lo
    lo, hi = lo - 0.1 * span, hi + 0.1 * span
    step = 10 ** np.floor(np.log10(span / 200)) if span > 0 else 0.01
    return float(np.floor(lo / step) * step), float(np.ceil(hi / step) * step), float(step)


def method_scores(
    handle: ModelHandle,
    bundle: DirectionBundle,
    instructions: Sequence[str],
    methods: Sequence[str],
    *,
    fit: bool = True,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Scores of every method in ``methods`` (one capture; instructions used as given)."""
    if not instructions:
        raise ValueError("type or upload at least one prompt")
    guards = guard_methods(bundle, methods, handle=handle, fit=fit, progress=progress)
    acts = t_inst_states(handle, bundle, list(instructions), normalize=False, progress=progress)
    return {m: g.score(acts) for m, g in guards.items()}


def method_scores_bounded(
    handle: ModelHandle,
    bundle: DirectionBundle,
    instructions: Sequence[str],
    methods: Sequence[str],
    budget: Budget,
    *,
    fit: bool = True,
    progress: Progress | None = None,
) -> tuple[dict[str, np.ndarray], int, bool]:
    """:func:`method_scores` in chunks under ``budget``: (scores of the first ``done`` prompts, done, stopped?)."""
    if not instructions:
        raise ValueError("type or upload at least one prompt")
    guards = guard_methods(bundle, methods, handle=handle, fit=fit, progress=progress)

    def chunk(part: list[str]) -> dict[str, np.ndarray]:
        acts = t_inst_states(handle, bundle, part, normalize=False)
        return {m: g.score(acts) for m, g in guards.items()}

    res = run_chunked(list(instructions), chunk, budget, progress=progress, stage="t_inst states")
    scores = {m: np.concatenate([r[m] for r in res.results]) for m in guards}
    return scores, res.done, res.stopped


def refusal_baseline_bounded(
    handle: ModelHandle, instructions: Sequence[str], budget: Budget, progress: Progress | None = None
) -> tuple[np.ndarray, int, bool]:
    """:func:`refusal_baseline` in chunks under ``budget`` (replies cached on disk as they are made): (refused of the
    first ``done`` prompts, done, stopped?)."""
    res = run_chunked(
        list(instructions), lambda part: refusal_baseline(handle, part), budget, progress=progress, stage="replies"
    )
    refused = np.concatenate(res.results) if res.results else np.zeros(0, dtype=bool)
    return refused, res.done, res.stopped


def truncate_sets(
    sets: Sequence[tuple[str, Sequence[str], Sequence[bool]]], n: int
) -> list[tuple[str, list[str], list[bool]]]:
    """The first ``n`` prompts of the concatenated ``sets`` (sets past them are left out; the last one kept may be
    cut)."""
    out, left = [], int(n)
    for name, insts, truth in sets:
        if left <= 0:
            break
        k = min(left, len(insts))
        out.append((name, list(insts[:k]), list(truth[:k])))
        left -= k
    return out


def roc_frames(
    scores: Mapping[str, Sequence[float]], truth: Sequence[bool], refused: Sequence[bool] | None = None
) -> tuple[pd.DataFrame, dict[str, float]]:
    """ROC curves of several methods on one frame (fpr, tpr, threshold, series = method label, method) and their
    AUCs; the refusal baseline as one point."""
    parts, aucs = [], {}
    for m, s in scores.items():
        fpr, tpr, thr, area = roc_curve(s, truth)
        aucs[m] = area
        parts.append(pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr, "series": method_label(m), "method": m}))
    if refused is not None:
        fp_rate, tp_rate = _rates(confusion(refused, truth))
        parts.append(
            pd.DataFrame(
                {"fpr": [fp_rate], "tpr": [tp_rate], "threshold": [np.nan], "series": [REFUSAL_POINT], "method": [""]}
            )
        )
    if not parts:
        raise ValueError("no method to draw")
    df = pd.concat(parts, ignore_index=True)
    df["threshold"] = df["threshold"].replace([np.inf, -np.inf], np.nan)
    return df, aucs


def method_points(
    scores: Mapping[str, Sequence[float]], truth: Sequence[bool], thresholds: Mapping[str, float]
) -> pd.DataFrame:
    """Each method's operating point at its threshold: fpr, tpr, what (label and threshold), series, threshold."""
    rows = []
    for m, s in scores.items():
        t = float(thresholds.get(m, 0.0))
        c = confusion((np.asarray(s, dtype=np.float64) >= t).tolist(), truth)
        fpr, tpr = _rates(c)
        rows.append(
            {
                "fpr": fpr,
                "tpr": tpr,
                "what": f"{method_label(m)} at {t:+.3g}",
                "series": method_label(m),
                "threshold": t,
            }
        )
    return pd.DataFrame(rows, columns=["fpr", "tpr", "what", "series", "threshold"])


def per_source_frame(
    sets: Sequence[tuple[str, Sequence[str], Sequence[bool]]],
    scores: Mapping[str, Sequence[float]],
    thresholds: Mapping[str, float],
) -> pd.DataFrame:
    """One row per source: set, n, truth, and per method its accuracy at its threshold (column = method label)."""
    rows = []
    k = 0
    for name, insts, truth in sets:
        if len(insts) != len(truth):
            raise ValueError(f"set {name}: one label per prompt")
        y = np.asarray(truth, dtype=bool)
        row: dict[str, Any] = {
            "set": name,
            "n": len(y),
            "truth": "harmful" if y.all() else ("harmless" if not y.any() else "mixed"),
        }
        for m, s in scores.items():
            part = np.asarray(s, dtype=np.float64)[k : k + len(y)]
            if len(part) != len(y):
                raise ValueError("one score per prompt")
            row[method_label(m)] = float(((part >= float(thresholds.get(m, 0.0))) == y).mean()) if len(y) else np.nan
        rows.append(row)
        k += len(y)
    return pd.DataFrame(rows)


def gated_side_by_side(
    handle: ModelHandle,
    bundle: DirectionBundle,
    vectors: np.ndarray,
    instructions: Sequence[str],
    *,
    layers: Sequence[int],
    coeff: float,
    positions: str = "prompt",
    cfg: GenerationConfig | None = None,
    method: str = DEFAULT_METHOD,
    threshold: float | str = 0.0,
    mode: str = "flagged",
    normalize: bool | None = None,
    on_text: Callable[[list[str], list[str]], None] | None = None,
) -> list[dict[str, Any]]:
    """Guard-gated steering for the Steer page: per instruction the guard's score and verdict, whether it was steered,
    the baseline and the gated text (and refusal marks), from ONE batched generate.

    ``mode="flagged"`` steers what the guard flags; ``"unflagged"`` the reverse (demos)."""
    if not instructions:
        raise ValueError("type at least one instruction (one per line)")
    if not layers:
        raise ValueError("choose at least one layer to steer")
    spec = SteeringSpec(np.asarray(vectors, dtype=np.float32), tuple(int(x) for x in layers), float(coeff), positions)
    return _gated_side_by_side(
        handle,
        bundle,
        list(instructions),
        spec,
        cfg,
        method=method,
        threshold=threshold,
        mode=mode,
        normalize=normalize,
        on_text=on_text,
    )
