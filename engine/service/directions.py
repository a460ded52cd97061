"""The Directions page and the direction choices of the other pages: frames, provenance, upload, download, recompute.

Contract:
- ``steerable_directions(bundle)`` lists the names a user can steer with (centroids excluded), harmfulness and refusal
  first; ``bundle_key(bundle)`` is a short content hash (a cache key for derived data).
- ``normalizes_instructions`` / ``normalize_like`` say whether and how the bundle's prompts were normalised, so user
  prompts put t_inst on comparable tokens (one implementation: ``engine.guard.normalize_like``).
- Frames are long format: ``norms_frame`` (direction, layer, norm), ``cosine_matrix`` (a, b, cosine) at one layer,
  ``cosine_across_layers`` (layer, cosine). Layers are captured rows 0..L (``engine.capture.LAYER_CONVENTION``).
- ``bundle_bytes`` / ``read_bundle_upload`` round-trip a bundle as safetensors; an upload that is not a
  ``.safetensors`` file, is malformed or does not fit the model raises ``StorageError`` saying so.
- ``stored_cosine_interval(bundle)``: cos(harmfulness, refusal) per layer with its bootstrap 95% interval as stored
  at precompute time (None for bundles made before it was stored); ``cosine_interval_on_demand(bundle, records,
  acts)`` recomputes it from labelled prompts and their states (the Clusters page's reference capture of the
  built-in train prompts) and refuses (``ValueError``) when those prompts do not reproduce the bundle's own cosines
  (an uploaded or recomputed bundle); ``cosine_interval_frame`` is its long-format frame (layer, cosine, low, high).
- ``recompute_directions(handle, harmful, harmless)`` runs ``engine.precompute.precompute`` on user prompt sets
  (``ValueError`` when a side is empty, or when they hold more than ``limits.max_rows()`` prompts together); it stops
  with ``limits.RunBudgetExceeded`` once its ``limits.Budget`` is spent (the replies made so far are in the label
  cache, so running it again continues from there).
- ``control_vector_download(bundle, handle, name, coeff, rows)`` is one direction as a llama.cpp GGUF control
  vector (``engine.controlvector``: row l is written as llama.cpp's direction.(l-1)), with its file name, the
  llama.cpp layer numbers and the ``llama-cli`` command; ``ValueError`` for a row without a llama.cpp slot (0, 1) or
  a coefficient that is not finite.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import datasets as ds
from .._version import __version__
from ..controlvector import control_vector_bytes, exportable_rows, llamacpp_command, llamacpp_layer, model_hint_for
from ..directions import CosineInterval, DirectionBundle, cosine, layer_cosines
from ..guard import normalize_like as guard_normalize_like
from ..models import ModelHandle
from ..precompute import PrecomputeResult, cosine_interval, precompute
from ..progress import Progress
from ..storage import StorageError, bundle_from_bytes, bundle_to_bytes, check_compatible
from .limits import Budget, check_rows

__all__ = [
    "ControlVectorDownload",
    "CosineInterval",
    "DirectionBundle",
    "bundle_bytes",
    "bundle_key",
    "control_vector_download",
    "control_vector_rows",
    "cosine_across_layers",
    "cosine_interval_frame",
    "cosine_interval_on_demand",
    "cosine_matrix",
    "normalize_like",
    "normalizes_instructions",
    "norms_frame",
    "provenance_json",
    "read_bundle_upload",
    "recompute_directions",
    "steerable_directions",
    "stored_cosine_interval",
]


def steerable_directions(bundle: DirectionBundle) -> list[str]:
    """Direction names a user can steer with (centroids and the Latent Guard's readers excluded), harmfulness and
    refusal first."""
    names = [
        n
        for n, d in bundle.directions.items()
        if not n.startswith("centroid:") and d.meta.get("kind") != "guard_reader"
    ]
    first = [n for n in ("harmfulness", "refusal") if n in names]
    return first + sorted(n for n in names if n not in first)


def bundle_key(bundle: DirectionBundle) -> str:
    """A short content hash of a bundle (a cache key for derived data)."""
    h = hashlib.sha256()
    for name in sorted(bundle.directions):
        d = bundle.directions[name]
        h.update(name.encode())
        h.update(np.ascontiguousarray(d.vectors).tobytes())
        if d.pos_centroid is not None:
            h.update(np.ascontiguousarray(d.pos_centroid).tobytes())
    return h.hexdigest()[:16]


def normalizes_instructions(bundle: DirectionBundle) -> bool:
    """Whether the bundle's prompts were normalised (trailing punctuation stripped) before capture."""
    data = bundle.provenance.get("data") or {}
    return bool(data.get("normalized_instructions", False))


def normalize_like(bundle: DirectionBundle, texts: Sequence[str]) -> list[str]:
    """Normalise prompts the way the bundle's prompts were, so t_inst lands on comparable tokens.

    The centroids of the default bundles come from instructions without trailing punctuation; scoring "How do I
    make a bomb?" against them puts t_inst on "?" instead of "bomb" (see the form:punctuation confound check).
    One implementation, shared with the Latent Guard: :func:`engine.guard.normalize_like`.
    """
    return guard_normalize_like(bundle, texts)


def norms_frame(bundle: DirectionBundle, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-layer norms, long format: direction, layer, norm."""
    names = list(names) if names is not None else steerable_directions(bundle)
    rows = []
    for n in names:
        for layer, v in enumerate(bundle.get(n).norms()):
            rows.append({"direction": n, "layer": layer, "norm": float(v)})
    return pd.DataFrame(rows, columns=["direction", "layer", "norm"])


def cosine_matrix(bundle: DirectionBundle, names: Sequence[str], layer: int) -> pd.DataFrame:
    """Cosine between every pair of directions at one layer, long format: a, b, cosine."""
    names = list(names)
    if not names:
        raise ValueError("choose at least one direction")
    if not 0 <= layer < bundle.n_rows:
        raise ValueError(f"layer {layer} is out of range 0..{bundle.n_rows - 1}")
    vecs = np.stack([bundle.get(n).vectors[layer] for n in names]).astype(np.float64)
    rows = []
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            rows.append({"a": a, "b": b, "cosine": float(cosine(vecs[i], vecs[j]))})
    return pd.DataFrame(rows, columns=["a", "b", "cosine"])


def cosine_across_layers(bundle: DirectionBundle, a: str, b: str) -> pd.DataFrame:
    """cos(a_l, b_l) for every layer: layer, cosine."""
    va, vb = bundle.get(a).vectors, bundle.get(b).vectors
    c = cosine(va, vb)
    return pd.DataFrame({"layer": np.arange(len(c)), "cosine": c.astype(float)})


def stored_cosine_interval(bundle: DirectionBundle) -> CosineInterval | None:
    """The bootstrap interval of cos(harmfulness, refusal) stored with the bundle at precompute time, if any."""
    d = (bundle.provenance.get("summary") or {}).get("cosine_ci")
    return CosineInterval.from_dict(d) if d else None


def cosine_interval_on_demand(
    bundle: DirectionBundle, records: Sequence[dict], acts: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> CosineInterval:
    """The interval recomputed from labelled prompts (``harmful``, ``refused``) and their states ``acts``
    (n, 2, L+1, d); ``ValueError`` unless those prompts reproduce the bundle's own per-layer cosines."""
    if "harmfulness" not in bundle.directions or "refusal" not in bundle.directions:
        raise ValueError("this bundle lacks a harmfulness or a refusal direction")
    pool = str(bundle.provenance.get("refusal_pool", "default"))
    ci = cosine_interval(list(records), acts, refusal_pool=pool, n_boot=n_boot, seed=seed)
    own = layer_cosines(bundle.harmfulness, bundle.refusal)
    if not ci.agrees_with(own):
        raise ValueError(
            "the built-in train prompts do not reproduce these directions' cosines (max difference "
            f"{float(np.abs(own - ci.point).max()):.3f}): they were uploaded or recomputed from other prompts, so "
            "their interval needs those prompts; recompute them here (the interval is stored with the result)"
        )
    return ci


def cosine_interval_frame(ci: CosineInterval) -> pd.DataFrame:
    """layer, cosine, low, high: the point estimate and the bootstrap interval per layer."""
    return pd.DataFrame({"layer": np.arange(len(ci.point)), "cosine": ci.point, "low": ci.low, "high": ci.high}).astype(
        {"cosine": float, "low": float, "high": float}
    )


def provenance_json(bundle: DirectionBundle) -> str:
    """The bundle's provenance and summary as indented JSON (for display and download)."""
    return json.dumps({"provenance": bundle.provenance, "summary": bundle.summary()}, indent=1, default=str)


def bundle_bytes(bundle: DirectionBundle) -> bytes:
    """The bundle as a safetensors file (provenance embedded), for download."""
    return bundle_to_bytes(bundle)


def read_bundle_upload(data: bytes, handle: ModelHandle, source: str = "upload") -> DirectionBundle:
    """Parse an uploaded safetensors directions file and check it fits ``handle`` (StorageError otherwise)."""
    if not source.lower().endswith(".safetensors"):
        raise StorageError(f"{source}: upload a .safetensors directions file (other formats are not accepted)")
    bundle = bundle_from_bytes(data, source=source)
    check_compatible(bundle, handle)
    if "harmfulness" not in bundle.directions:
        bundle.provenance.setdefault("note", "no harmfulness direction: the Latent Guard and Inspect need one")
    return bundle


def recompute_directions(
    handle: ModelHandle,
    harmful: Sequence[ds.PromptSet],
    harmless: Sequence[ds.PromptSet],
    *,
    progress: Progress | None = None,
    budget: Budget | None = None,
) -> PrecomputeResult:
    """Recompute every direction from user prompt sets (labels by greedy generation, cached), within the row cap and
    the time budget (``engine.service.limits``)."""
    if not harmful or not any(len(p) for p in harmful):
        raise ValueError("upload at least one harmful prompt file with at least one prompt")
    if not harmless or not any(len(p) for p in harmless):
        raise ValueError("upload at least one harmless prompt file with at least one prompt")
    check_rows(sum(len(p) for p in [*harmful, *harmless]), "the uploaded prompt files")
    budget = budget or Budget()
    guarded = budget.guard(progress, "Recomputing the directions")
    return precompute(handle, list(harmful), list(harmless), progress=guarded)


@dataclass(frozen=True)
class ControlVectorDownload:
    """A direction as a llama.cpp control vector: the GGUF bytes and how to use them."""

    data: bytes
    file_name: str
    rows: list[int]
    llamacpp_layers: list[int]
    command: str


def control_vector_download(
    bundle: DirectionBundle, handle: ModelHandle, name: str, coeff: float, rows: Sequence[int]
) -> ControlVectorDownload:
    """``coeff`` x direction ``name`` at captured ``rows`` as a GGUF control vector (llama.cpp: ``--control-vector``;
    row l -> direction.(l-1), every token). Exportable rows are 2..L (``engine.controlvector.exportable_rows``)."""
    if not math.isfinite(coeff):
        raise ValueError(f"the coefficient must be a finite number, got {coeff}")
    chosen = sorted({int(r) for r in rows})
    if not chosen:
        raise ValueError("choose at least one layer")
    for r in chosen:
        llamacpp_layer(r, handle.n_layers)  # ValueError (ControlVectorError) with the valid rows
    d = bundle.get(name)
    data = control_vector_bytes(
        d,
        rows=chosen,
        coeff=coeff,
        model_hint=model_hint_for(handle),
        n_layers=handle.n_layers,
        extra={"direction": name, "coeff": float(coeff), "model_id": handle.model_id, "engine_version": __version__},
    )
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{name}-x{coeff:g}-rows{chosen[0]}-{chosen[-1]}").strip("-")
    file_name = f"{stem}.gguf"
    return ControlVectorDownload(
        data=data,
        file_name=file_name,
        rows=chosen,
        llamacpp_layers=[llamacpp_layer(r, handle.n_layers) for r in chosen],
        command=llamacpp_command(file_name, chosen, handle.n_layers),
    )


def control_vector_rows(handle: ModelHandle) -> list[int]:
    """The rows a control vector can be exported at for this model (2..L)."""
    return exportable_rows(handle.n_layers)
