"""Where the trained guard readers live: in the directions bundle, else fitted once and cached.

Contract:
- ``fit_guard_readers(acts, harmful, data=...)`` fits every reader of :data:`.readers.READER_METHODS` plus
  :data:`.readers.BAND_METHOD` on t_inst states of training prompts (each with its own cross-validated choices, see
  :func:`.readers.fit_reader`), and the paper's centroid rule under the same CV (its calibrated threshold). Returns
  a record ``{"readers": {method: LinearReader}, "summary": {...}}``; the summary (``PROVENANCE_KEY`` in a bundle's
  provenance) holds per method the layers, hyperparameters, CV figures and the calibrated threshold, plus ``data``
  (the training sets' names, hashes and counts, and a hash of the exact instruction list) and ``version``.
- ``with_readers(bundle, record)`` is the bundle plus one ``guard:<method>`` direction set per reader (``meta.kind
  == "guard_reader"``) and the summary in its provenance; the other directions are untouched (same objects).
- ``guard_readers(bundle, handle, fit=True)``: the bundle's own readers when it has them; else (a bundle made before
  the readers existed, such as the shipped ``assets/directions/default.safetensors`` until it is regenerated) the
  readers fitted on the **built-in train split** (normalised like the bundle's prompts) and cached in the user cache
  (``guard-readers/<model>-<key>.safetensors``, keyed by the model's fingerprint, the bundle's guard centroids and
  :data:`READERS_VERSION`; first use costs one capture of the train prompts). With ``fit=False`` a missing reader is
  a ``ValueError`` saying how to get it. Results are memoised per cache file for the process.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..directions import DirectionBundle
from ..models import ModelHandle, cache_dir
from ..progress import Progress, staged
from .centroid import guard_direction, normalize_like
from .readers import BAND_METHOD, READER_METHODS, LinearReader, centroid_cv, fit_reader

__all__ = [
    "PROVENANCE_KEY",
    "READERS_VERSION",
    "READER_PREFIX",
    "fit_guard_readers",
    "guard_readers",
    "readers_from_bundle",
    "with_readers",
]

READER_PREFIX = "guard:"
PROVENANCE_KEY = "guard_readers"
READERS_VERSION = 1
FITTED_METHODS: tuple[str, ...] = (*READER_METHODS, BAND_METHOD)

_MEMO: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()


def instructions_hash(instructions: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(instructions).encode()).hexdigest()[:16]


def fit_guard_readers(
    acts: np.ndarray,
    harmful: Sequence[bool] | np.ndarray,
    *,
    data: dict[str, Any] | None = None,
    methods: Sequence[str] = FITTED_METHODS,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fit the readers and the centroid calibration on t_inst ``acts`` (n, L+1, d) (see the module docstring)."""
    y = np.asarray(harmful, dtype=bool)
    readers: dict[str, LinearReader] = {}
    summary: dict[str, Any] = {"version": READERS_VERSION, "data": dict(data or {}), "methods": {}}
    todo = list(dict.fromkeys(methods))
    for k, m in enumerate(todo):
        if progress is not None:
            progress("fitting guard readers", k, len(todo))
        r = fit_reader(m, acts, y, seed=seed)
        readers[m] = r
        summary["methods"][m] = r.info()
    if progress is not None:
        progress("fitting guard readers", len(todo), len(todo))
    summary["centroid"] = centroid_cv(acts, y, seed=seed)
    return {"readers": readers, "summary": summary}


def with_readers(bundle: DirectionBundle, record: dict[str, Any]) -> DirectionBundle:
    """``bundle`` plus the readers of ``record`` (other directions untouched)."""
    dirs = dict(bundle.directions)
    for m, r in record["readers"].items():
        d = r.to_direction_set()
        dirs[d.name] = d
        if d.name != f"{READER_PREFIX}{m}":  # pragma: no cover - fit_reader names them so
            raise RuntimeError(f"reader {m!r} is named {d.name!r}")
    prov = dict(bundle.provenance)
    prov[PROVENANCE_KEY] = record["summary"]
    return DirectionBundle(dirs, prov)


def readers_from_bundle(bundle: DirectionBundle) -> dict[str, Any] | None:
    """The readers stored in ``bundle`` (None when it has none)."""
    readers = {}
    for name, d in bundle.directions.items():
        if name.startswith(READER_PREFIX) and d.meta.get("kind") == "guard_reader":
            r = LinearReader.from_direction_set(d)
            readers[r.method] = r
    if not readers:
        return None
    summary = dict(bundle.provenance.get(PROVENANCE_KEY) or {})
    return {"readers": readers, "summary": summary, "source": "bundle"}


def _bundle_guard_key(bundle: DirectionBundle) -> str:
    h = hashlib.sha256()
    d = guard_direction(bundle)
    for a in (d.vectors, d.pos_centroid, d.neg_centroid):
        if a is not None:
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    h.update(json.dumps(bool((bundle.provenance.get("data") or {}).get("normalized_instructions"))).encode())
    return h.hexdigest()[:16]


def cached_readers_path(handle: ModelHandle, bundle: DirectionBundle) -> Path:
    """The cache file of the readers fitted for ``bundle`` on ``handle`` (see the module docstring)."""
    fp = hashlib.sha256(json.dumps(handle.fingerprint(), sort_keys=True).encode()).hexdigest()[:12]
    name = handle.spec.name.replace("/", "_")
    return cache_dir() / "guard-readers" / f"{name}-{fp}-{_bundle_guard_key(bundle)}-v{READERS_VERSION}.safetensors"


def _fit_builtin(handle: ModelHandle, bundle: DirectionBundle, progress: Progress | None) -> dict[str, Any]:
    from .. import datasets as ds
    from ..capture import capture

    harmful = [ds.load_builtin("harmful", "train")]
    harmless = [ds.load_builtin("harmless", "train"), ds.load_builtin("harmless_sounds_harmful", "train")]
    insts: list[str] = []
    y: list[bool] = []
    for sets, truth in ((harmful, True), (harmless, False)):
        for ps in sets:
            insts += ps.instructions()
            y += [truth] * len(ps)
    texts = normalize_like(bundle, insts)
    acts = capture(handle, texts, ("t_inst",), progress=staged(progress, "guard readers: capturing train")).at("t_inst")
    data = {
        "source": "built-in train split (fitted on first use, cached)",
        "harmful": [ps.provenance() for ps in harmful],
        "harmless": [ps.provenance() for ps in harmless],
        "normalized_instructions": texts != insts,
        "instructions_sha256": instructions_hash(texts),
        "n": len(texts),
        "n_harmful": int(sum(y)),
    }
    return fit_guard_readers(acts, y, data=data, progress=progress)


def guard_readers(
    bundle: DirectionBundle, handle: ModelHandle | None, *, fit: bool = True, progress: Progress | None = None
) -> dict[str, Any]:
    """The readers for ``bundle``: stored in it, else cached / fitted (see the module docstring)."""
    from ..storage import StorageError, load_bundle, save_bundle

    own = readers_from_bundle(bundle)
    if own is not None:
        return own
    if handle is None:
        raise ValueError("these directions have no stored guard readers; give the model so they can be fitted")
    path = cached_readers_path(handle, bundle)
    key = str(path)
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
        if path.is_file():
            try:
                got = readers_from_bundle(load_bundle(path, handle))
            except StorageError:
                got = None
                path.unlink(missing_ok=True)
            if got is not None:
                got["source"] = f"cache ({path.name})"
                _MEMO[key] = got
                return got
        if not fit:
            raise ValueError(
                "these directions have no stored guard readers (lda, probe, ...); run `python -m engine precompute "
                f"--model {handle.spec.name}` to store them with the directions, or let the guard fit them once on "
                "the built-in train split (the CLI and the app do, then cache them)"
            )
        record = _fit_builtin(handle, bundle, progress)
        from ..storage import make_provenance

        store = with_readers(DirectionBundle({}, make_provenance(handle)), record)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_bundle(store, path)
        record = {**record, "source": f"fitted on the built-in train split, cached ({path.name})"}
        _MEMO[key] = record
        return record
