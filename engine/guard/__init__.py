"""The Latent Guard: classify requests as harmful from the model's own t_inst hidden states.

Modules (one concern each):
- ``centroid``  the paper's guard (§5): mean over all L+1 rows of cos(h, mu_harmful) - cos(h, mu_harmless), harmful
                iff >= 0; unchanged, and the default method
- ``readers``   trained readers of the same states (shrinkage LDA, L2 logistic probe, band-averaged LDA), every
                choice by cross-validation inside the training prompts
- ``metrics``   ROC curve, AUC, balanced accuracy, threshold calibration
- ``store``     where readers live: stored in the directions bundle, else fitted once on the built-in train split and
                cached
- ``methods``   guards by name (``centroid``, ``lda``, ``probe``, ``lda-band``): scores, thresholds ("0" and
                "calibrated"), verdicts (``guard``, ``guard_scores``)
- ``evaluate``  per-source evaluation over labelled prompt files: accuracy at each threshold, AUC, balanced accuracy
- ``gate``      guard-gated steering: rows the guard flags get the steering, the others run unsteered

``from engine.guard import guard, guard_scores, roc_curve, GuardResult`` keeps the paper guard's behaviour.
"""

from __future__ import annotations

from .centroid import centroid_scores, guard_direction, normalize_like
from .evaluate import LabelledSource, evaluate_scores, evaluate_sources, labelled_sources, template_sources
from .gate import GATE_MODES, gate_specs, gated_generate, gated_side_by_side
from .methods import (
    DEFAULT_METHOD,
    METHODS,
    RECOMMENDED_METHOD,
    THRESHOLDS,
    GuardMethod,
    GuardResult,
    guard,
    guard_method,
    guard_methods,
    guard_scores,
    t_inst_states,
)
from .metrics import auc, balanced_accuracy, calibrate_threshold, roc_curve
from .readers import BAND_METHOD, READER_METHODS, LinearReader, centroid_cv, fit_reader, stratified_folds
from .store import PROVENANCE_KEY, fit_guard_readers, guard_readers, readers_from_bundle, with_readers

__all__ = [
    "BAND_METHOD",
    "DEFAULT_METHOD",
    "GATE_MODES",
    "METHODS",
    "PROVENANCE_KEY",
    "READER_METHODS",
    "RECOMMENDED_METHOD",
    "THRESHOLDS",
    "GuardMethod",
    "GuardResult",
    "LabelledSource",
    "LinearReader",
    "auc",
    "balanced_accuracy",
    "calibrate_threshold",
    "centroid_cv",
    "centroid_scores",
    "evaluate_scores",
    "evaluate_sources",
    "fit_guard_readers",
    "fit_reader",
    "gate_specs",
    "gated_generate",
    "gated_side_by_side",
    "guard",
    "guard_direction",
    "guard_method",
    "guard_methods",
    "guard_readers",
    "guard_scores",
    "labelled_sources",
    "normalize_like",
    "readers_from_bundle",
    "roc_curve",
    "stratified_folds",
    "t_inst_states",
    "template_sources",
    "with_readers",
]
