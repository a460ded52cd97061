"""Guard methods by name: scores, thresholds and verdicts for prompts, whichever reader makes them.

Contract:
- ``METHODS``: ``centroid`` (the paper's guard, :mod:`.centroid`, the default), ``lda``, ``probe`` and ``lda-band``
  (trained readers, :mod:`.readers`). Every method scores the t_inst hidden states of all L+1 rows; higher = more
  harmful; a prompt is flagged iff score >= threshold. ``RECOMMENDED_METHOD`` (``probe``) is the reader with the best
  nested cross-validated balanced accuracy on the built-in train split (the only data any choice here may use):
  centroid 0.80, lda 0.86, lda-band 0.85, probe 0.87 (AUC 0.87 / 0.93 / 0.93 / 0.94; outer 5-fold, each reader's
  own CV inside). The default stays the paper's guard.
- Thresholds: ``0`` (the paper's rule for ``centroid``; equal priors / p = 0.5 for the readers) and ``"calibrated"``
  (the threshold with the highest balanced accuracy on out-of-fold scores of the training prompts, see
  :func:`.readers.fit_reader`; for ``centroid`` the same calibration of its out-of-fold Delta_harmful). A finite
  number is used as given.
- :func:`guard_method` resolves a name against a bundle: ``centroid`` needs only the bundle's centroids (its
  calibrated threshold needs the readers' record, below); the others need the bundle's stored readers
  (``guard:<method>`` entries, written by ``precompute``). A bundle without them (e.g. one shipped before the readers
  existed) gets them from :mod:`.store`: fitted once on the built-in train split and cached (``fit=True``, the
  default), or a ``ValueError`` that says how to get them (``fit=False``).
- :func:`guard_scores` / :func:`guard` keep the paper guard's signatures (``method="centroid"`` by default), so
  ``from engine.guard import guard, guard_scores`` behaves exactly as before for existing callers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..capture import capture
from ..directions import DirectionBundle, DirectionSet
from ..models import ModelHandle
from ..progress import Progress
from .centroid import centroid_scores, check_centroids, guard_direction, normalize_like
from .readers import BAND_METHOD, READER_METHODS

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "RECOMMENDED_METHOD",
    "THRESHOLDS",
    "GuardMethod",
    "GuardResult",
    "guard",
    "guard_method",
    "guard_methods",
    "guard_scores",
    "resolve_threshold",
    "t_inst_states",
]

DEFAULT_METHOD = "centroid"
RECOMMENDED_METHOD = "probe"
METHODS: tuple[str, ...] = ("centroid", *READER_METHODS, BAND_METHOD)
THRESHOLDS = ("0", "calibrated")


@dataclass(frozen=True)
class GuardResult:
    instruction: str
    score: float
    harmful: bool

    def to_dict(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "score": self.score, "harmful": self.harmful}


@dataclass(frozen=True)
class GuardMethod:
    """One named guard: ``score(acts)`` over t_inst states (n, L+1, d) and its thresholds."""

    name: str
    scorer: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    calibrated: float | None = None  # None: no training record to calibrate from (see :mod:`.store`)
    info: dict[str, Any] = field(default_factory=dict)

    def score(self, acts: np.ndarray) -> np.ndarray:
        """(n,) float64 scores for t_inst states ``acts`` (n, L+1, d); higher = more harmful."""
        return np.asarray(self.scorer(acts), dtype=np.float64)

    def threshold(self, which: float | str = 0.0) -> float:
        """``0`` / ``"0"``, ``"calibrated"`` or a finite number (see the module docstring)."""
        if which == "calibrated":
            if self.calibrated is None:
                raise ValueError(
                    f"the {self.name} guard has no calibrated threshold with these directions; run "
                    "`python -m engine precompute` to store the guard readers, or use threshold 0"
                )
            return float(self.calibrated)
        if which == "0":
            return 0.0
        return _check_threshold(which)

    @property
    def thresholds(self) -> dict[str, float]:
        """The named thresholds this guard has: {"0": 0.0, "calibrated": t} (the latter when known)."""
        out = {"0": 0.0}
        if self.calibrated is not None:
            out["calibrated"] = float(self.calibrated)
        return out


def _centroid(acts: np.ndarray, d: DirectionSet) -> np.ndarray:
    return centroid_scores(acts, d)


def _check_threshold(threshold: Any) -> float:
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float, np.floating, np.integer))
        or not math.isfinite(float(threshold))
    ):
        raise ValueError(f"threshold must be a finite number or 'calibrated', got {threshold!r}")
    return float(threshold)


def resolve_threshold(method: GuardMethod, threshold: float | str) -> float:
    return method.threshold(threshold)


def _check_method(name: str) -> str:
    if name not in METHODS:
        raise ValueError(f"unknown guard method {name!r}; choose one of {', '.join(METHODS)}")
    return name


def guard_method(
    directions: DirectionBundle | DirectionSet,
    method: str = DEFAULT_METHOD,
    *,
    handle: ModelHandle | None = None,
    fit: bool = True,
    progress: Progress | None = None,
    centroids: str = "auto",
) -> GuardMethod:
    """The named guard for these directions (see the module docstring for where readers come from)."""
    return guard_methods(directions, [method], handle=handle, fit=fit, progress=progress, centroids=centroids)[method]


def guard_methods(
    directions: DirectionBundle | DirectionSet,
    methods: Sequence[str] = METHODS,
    *,
    handle: ModelHandle | None = None,
    fit: bool = True,
    progress: Progress | None = None,
    centroids: str = "auto",
) -> dict[str, GuardMethod]:
    """Several named guards at once (readers are looked up or fitted once for all of them)."""
    from .store import guard_readers

    names = [_check_method(m) for m in dict.fromkeys(methods)]
    if not names:
        raise ValueError("choose at least one guard method")
    record: Mapping[str, Any] | None = None
    need_readers = any(m != "centroid" for m in names)
    if need_readers and not isinstance(directions, DirectionBundle):
        raise ValueError("trained guard readers are stored in a directions bundle; pass the bundle")
    if isinstance(directions, DirectionBundle):
        if need_readers:
            record = guard_readers(directions, handle, fit=fit, progress=progress)
        else:  # the centroid guard alone: its calibrated threshold when a readers' record exists, never a fit
            try:
                record = guard_readers(directions, handle, fit=False) if handle is not None else None
            except ValueError:
                record = None
            if record is None:
                from .store import readers_from_bundle

                record = readers_from_bundle(directions)
    out: dict[str, GuardMethod] = {}
    for m in names:
        if m == "centroid":
            d = guard_direction(directions, centroids)
            cal = None
            info: dict[str, Any] = {
                "method": "centroid",
                "rule": "mean over all L+1 rows of cos(h, mu_h) - cos(h, mu_l)",
            }
            if record is not None and centroids in ("auto", "guard") and "centroid" in record.get("summary", {}):
                c = record["summary"]["centroid"]
                cal = float(c["threshold"])
                info["cv"] = {k: v for k, v in c.items() if k != "threshold"}
            out[m] = GuardMethod("centroid", functools.partial(_centroid, d=d), cal, info)
        else:
            assert record is not None
            readers = record["readers"]
            if m not in readers:
                raise ValueError(
                    f"these directions have no stored {m!r} guard reader; run `python -m engine precompute` "
                    "to store the guard readers with the directions"
                )
            r = readers[m]
            out[m] = GuardMethod(m, r.score, float(r.threshold), r.info())
    return out


def t_inst_states(
    handle: ModelHandle,
    directions: DirectionBundle | DirectionSet,
    instructions: Sequence[str],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
    normalize: bool | None = None,
) -> np.ndarray:
    """Hidden states (n, L+1, d) at t_inst of ``instructions``, normalised like the bundle's prompts unless
    ``normalize is False`` (one forward pass without the LM head per prompt)."""
    insts = normalize_like(directions, instructions) if normalize is not False else list(instructions)
    return capture(handle, insts, ("t_inst",), batch_size=batch_size, progress=progress).at("t_inst")


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
    method: str = DEFAULT_METHOD,
) -> np.ndarray:
    """Scores per instruction: (n,) float64 (``centroid``: Delta_harmful). ``acts`` (n, L+1, d) at t_inst skips the
    capture."""
    _check_method(method)
    if method == "centroid":
        check_centroids(guard_direction(directions, centroids), handle.n_rows, handle.hidden_size)
    g = guard_method(directions, method, handle=handle, progress=progress, centroids=centroids)
    if acts is None:
        acts = t_inst_states(
            handle, directions, instructions, batch_size=batch_size, progress=progress, normalize=normalize
        )
    return g.score(acts)


def guard(
    handle: ModelHandle,
    directions: DirectionBundle | DirectionSet,
    instructions: Sequence[str],
    *,
    threshold: float | str = 0.0,
    batch_size: int = 16,
    progress: Progress | None = None,
    normalize: bool | None = None,
    method: str = DEFAULT_METHOD,
) -> list[GuardResult]:
    """Verdicts: harmful iff score >= threshold (a number, ``"0"`` or ``"calibrated"``)."""
    _check_method(method)
    if threshold != "calibrated" and threshold != "0":
        _check_threshold(threshold)
    g = guard_method(directions, method, handle=handle, progress=progress)
    t = g.threshold(threshold)
    scores = guard_scores(
        handle, directions, instructions, batch_size=batch_size, progress=progress, normalize=normalize, method=method
    )
    return [GuardResult(i, float(s), bool(s >= t)) for i, s in zip(instructions, scores, strict=True)]
