"""Latent Guard: classify requests as harmful from the model's own t_inst hidden states.

Contract: score = Delta_harmful = mean over all L+1 captured rows of cos(h, mu_harmful) - cos(h, mu_harmless) at
t_inst (paper Eq. 3 and §5, as the paper's code averages rows); harmful iff score >= threshold (default 0).
The centroids are the bundle's ``guard`` entry when it has one (every harmful vs every harmless training prompt at
t_inst, the paper's §5 protocol), else those of its ``harmfulness`` direction (refused harmful vs accepted harmless);
``centroids=`` picks one explicitly. No trained classifier, no tuned threshold.
Prompts are normalised like the bundle's own prompts (trailing punctuation stripped when its provenance says
``normalized_instructions``), so t_inst lands on comparable tokens; ``normalize=False`` scores the text as typed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .capture import capture
from .directions import DirectionBundle, DirectionSet, delta
from .models import ModelHandle
from .progress import Progress

__all__ = ["GuardResult", "guard", "guard_scores", "roc_curve"]


@dataclass(frozen=True)
class GuardResult:
    instruction: str
    score: float
    harmful: bool

    def to_dict(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "score": self.score, "harmful": self.harmful}


def guard_direction(directions: DirectionBundle | DirectionSet, centroids: str = "auto") -> DirectionSet:
    """The direction set whose centroids the guard compares against ("auto": ``guard`` if present, else
    ``harmfulness``)."""
    if centroids not in ("auto", "guard", "harmfulness"):
        raise ValueError("centroids must be 'auto', 'guard' or 'harmfulness'")
    if not isinstance(directions, DirectionBundle):
        return directions
    if centroids == "auto":
        centroids = "guard" if "guard" in directions.directions else "harmfulness"
    return directions.get(centroids)


def normalize_like(directions: DirectionBundle | DirectionSet, texts: Sequence[str]) -> list[str]:
    """Normalise prompts the way the bundle's prompts were (see the module docstring)."""
    from .datasets import normalize_instruction

    prov = directions.provenance if isinstance(directions, DirectionBundle) else {}
    if not (prov.get("data") or {}).get("normalized_instructions"):
        return list(texts)
    return [normalize_instruction(t) or t for t in texts]


def _check_threshold(threshold: float) -> float:
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float, np.floating))
        or not math.isfinite(float(threshold))
    ):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return float(threshold)


def guard_scores(
    handle: ModelHandle,
    directions: DirectionBundle | DirectionSet,
    instructions: Sequence[str],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
    acts: np.ndarray | None = None,
    normalize: bool | None = None,
    centroids: str = "auto",
) -> np.ndarray:
    """Delta_harmful per instruction: (n,) float64. ``acts`` (n, L+1, d) at t_inst skips the capture."""
    d = guard_direction(directions, centroids)
    if d.pos_centroid is None or d.neg_centroid is None:
        raise ValueError("the harmfulness direction has no centroids; the Latent Guard needs them")
    if d.vectors.shape != (handle.n_rows, handle.hidden_size):
        raise ValueError(
            f"directions are {d.vectors.shape}, this model needs ({handle.n_rows}, {handle.hidden_size}); recompute them"
        )
    if acts is None:
        instructions = normalize_like(directions, instructions) if normalize is not False else list(instructions)
        acts = capture(handle, list(instructions), ("t_inst",), batch_size=batch_size, progress=progress).at("t_inst")
    return delta(acts, d.pos_centroid, d.neg_centroid)


def guard(
    handle: ModelHandle,
    directions: DirectionBundle | DirectionSet,
    instructions: Sequence[str],
    *,
    threshold: float = 0.0,
    batch_size: int = 16,
    progress: Progress | None = None,
    normalize: bool | None = None,
) -> list[GuardResult]:
    t = _check_threshold(threshold)
    scores = guard_scores(
        handle, directions, instructions, batch_size=batch_size, progress=progress, normalize=normalize
    )
    return [GuardResult(i, float(s), bool(s >= t)) for i, s in zip(instructions, scores, strict=True)]


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
    auc = float(np.trapezoid(tpr, fpr))
    return fpr, tpr, thr, auc
