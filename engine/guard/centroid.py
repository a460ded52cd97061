"""The paper's Latent Guard (§5): centroid cosine at t_inst, unchanged; the package's default method.

Contract: score = Delta_harmful = mean over all L+1 captured rows of cos(h, mu_harmful) - cos(h, mu_harmless) at
t_inst (paper Eq. 3 and §5, as the paper's code averages rows); harmful iff score >= threshold (default 0).
The centroids are the bundle's ``guard`` entry when it has one (every harmful vs every harmless training prompt at
t_inst, the paper's §5 protocol), else those of its ``harmfulness`` direction (refused harmful vs accepted harmless);
``centroids=`` picks one explicitly. No trained classifier, no tuned threshold.
Prompts are normalised like the bundle's own prompts (trailing punctuation stripped when its provenance says
``normalized_instructions``), so t_inst lands on comparable tokens; ``normalize=False`` scores the text as typed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..directions import DirectionBundle, DirectionSet, delta

__all__ = ["centroid_scores", "check_centroids", "guard_direction", "normalize_like"]


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
    from ..datasets import normalize_instruction

    prov = directions.provenance if isinstance(directions, DirectionBundle) else {}
    if not (prov.get("data") or {}).get("normalized_instructions"):
        return list(texts)
    return [normalize_instruction(t) or t for t in texts]


def check_centroids(d: DirectionSet, n_rows: int, hidden_size: int) -> None:
    """The centroids exist and fit a model with ``n_rows`` x ``hidden_size`` captured states."""
    if d.pos_centroid is None or d.neg_centroid is None:
        raise ValueError("the harmfulness direction has no centroids; the Latent Guard needs them")
    if d.vectors.shape != (n_rows, hidden_size):
        raise ValueError(
            f"directions are {d.vectors.shape}, this model needs ({n_rows}, {hidden_size}); recompute them"
        )


def centroid_scores(acts: np.ndarray, d: DirectionSet) -> np.ndarray:
    """Delta_harmful of ``acts`` (n, L+1, d) at t_inst against ``d``'s centroids: (n,) float64."""
    if d.pos_centroid is None or d.neg_centroid is None:
        raise ValueError("the harmfulness direction has no centroids; the Latent Guard needs them")
    return delta(acts, d.pos_centroid, d.neg_centroid)
