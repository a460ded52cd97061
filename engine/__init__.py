"""steering-explorer engine: see how a chat model represents harmfulness and refusal, and steer it.

Public API (everything a page, experiment or script needs); see each module's docstring for its contract.
"""

from __future__ import annotations

from ._version import __version__
from .capture import LAYER_CONVENTION, ActivationSet, capture, capture_tokens, record
from .directions import DirectionBundle, DirectionSet, belief_scores, cosine, delta, layer_cosines
from .guard import GuardResult, guard, guard_scores, roc_curve
from .labels import Label, label_refusals, refusal_logodds
from .models import ModelError, ModelHandle, ModelSpec, load_model
from .positions import PromptPositions, locate
from .refusal import REFUSAL_PHRASES, is_refusal
from .steering import GenerationConfig, GridBlock, SteeringSpec, generate, grid, side_by_side, steer
from .storage import StorageError, load_bundle, save_bundle

__all__ = [
    "LAYER_CONVENTION",
    "REFUSAL_PHRASES",
    "ActivationSet",
    "DirectionBundle",
    "DirectionSet",
    "GenerationConfig",
    "GridBlock",
    "GuardResult",
    "Label",
    "ModelError",
    "ModelHandle",
    "ModelSpec",
    "PromptPositions",
    "SteeringSpec",
    "StorageError",
    "__version__",
    "belief_scores",
    "capture",
    "capture_tokens",
    "cosine",
    "delta",
    "generate",
    "grid",
    "guard",
    "guard_scores",
    "is_refusal",
    "label_refusals",
    "layer_cosines",
    "load_bundle",
    "load_model",
    "locate",
    "record",
    "refusal_logodds",
    "roc_curve",
    "save_bundle",
    "side_by_side",
    "steer",
]
