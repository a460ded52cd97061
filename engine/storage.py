"""Saving and loading direction bundles: safetensors + JSON provenance. No pickle anywhere.

Contract:
- ``save_bundle(bundle, path, dtype="float32")`` writes ``path`` (``.safetensors``; tensors ``{name}/vectors``,
  ``{name}/pos_centroid``, ``{name}/neg_centroid``) with the provenance JSON embedded in the safetensors metadata
  and also written beside it as ``path.with_suffix('.json')``. Writes are atomic (temp file + rename).
- ``dtype="float16"`` halves the file (used for the shipped assets): every value is rounded to the nearest float16,
  so each layer's vector keeps a relative L2 error of at most ``FLOAT16_REL_ERROR`` = 2^-11 (about 4.9e-4; values
  under 6.1e-5 are subnormal and add at most 2^-25 absolute each). A value beyond float16's range (65504) is a
  :class:`StorageError`. Loading always returns float32 arrays, whatever the file stores.
- ``load_bundle(path, handle=None)`` reads it back; with a handle, a file made for another model (depth, width,
  weights or chat template) fails with :class:`StorageError` that says what to do.
- Provenance: model id, weights hash, chat-template hash, layer convention, positions, data sets (names, hashes,
  counts), normalisation, date, engine version.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .capture import LAYER_CONVENTION
from .directions import DirectionBundle, DirectionSet

__all__ = [
    "FLOAT16_REL_ERROR",
    "FORMAT",
    "STORAGE_DTYPES",
    "StorageError",
    "bundle_from_bytes",
    "bundle_to_bytes",
    "check_compatible",
    "load_bundle",
    "make_provenance",
    "save_bundle",
]

FORMAT = "steering-explorer/directions-v1"
META_KEY = "steering_explorer"
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16}
FLOAT16_REL_ERROR = 2.0**-11  # float16 unit roundoff: the per-layer relative error bound of float16 storage
_FLOAT16_MAX = float(np.finfo(np.float16).max)


class StorageError(ValueError):
    """A directions file is malformed or belongs to another model."""


def engine_version() -> str:
    return __version__


def make_provenance(handle: Any, **extra: Any) -> dict[str, Any]:
    prov = {
        "format": FORMAT,
        "engine_version": engine_version(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "layer_convention": LAYER_CONVENTION,
        **handle.fingerprint(),
    }
    prov.update(extra)
    return prov


def _storage_dtype(dtype: str) -> Any:
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, not {dtype!r}")
    return STORAGE_DTYPES[dtype]


def _stored(array: np.ndarray, dtype: str, what: str) -> np.ndarray:
    a = np.asarray(array, dtype=np.float32)
    if dtype == "float16" and a.size and float(np.nanmax(np.abs(a))) > _FLOAT16_MAX:
        raise StorageError(f"{what} has values beyond float16's range ({_FLOAT16_MAX:g}); save it as float32")
    return np.ascontiguousarray(a, dtype=_storage_dtype(dtype))


def _tensors(bundle: DirectionBundle, dtype: str = "float32") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    _storage_dtype(dtype)
    tensors: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for name, d in bundle.directions.items():
        if "/" in name:
            raise StorageError(f"direction name {name!r} may not contain '/'")
        tensors[f"{name}/vectors"] = _stored(d.vectors, dtype, f"direction {name!r}")
        if d.pos_centroid is not None:
            tensors[f"{name}/pos_centroid"] = _stored(d.pos_centroid, dtype, f"the pos_centroid of {name!r}")
        if d.neg_centroid is not None:
            tensors[f"{name}/neg_centroid"] = _stored(d.neg_centroid, dtype, f"the neg_centroid of {name!r}")
        meta[name] = {
            "position": d.position,
            "n_pos": d.n_pos,
            "n_neg": d.n_neg,
            "normalized": d.normalized,
            "meta": d.meta,
        }
    return tensors, meta


def bundle_to_bytes(bundle: DirectionBundle, dtype: str = "float32") -> bytes:
    """The bundle as safetensors bytes; ``dtype`` is the storage precision (float32, or float16 for small assets)."""
    from safetensors.numpy import save

    tensors, meta = _tensors(bundle, dtype)
    doc = {"format": FORMAT, "provenance": bundle.provenance, "directions": meta, "storage_dtype": dtype}
    return save(tensors, metadata={META_KEY: json.dumps(doc, default=str)})


def save_bundle(bundle: DirectionBundle, path: str | os.PathLike, *, dtype: str = "float32") -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = bundle_to_bytes(bundle, dtype)
    _atomic_write(path, data)
    side = {"format": FORMAT, "storage_dtype": dtype, "provenance": bundle.provenance, "summary": bundle.summary()}
    _atomic_write(path.with_suffix(".json"), json.dumps(side, indent=1, default=str).encode())
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; these are shareable artifacts
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def bundle_from_bytes(data: bytes, *, source: str = "upload") -> DirectionBundle:
    """Parse a safetensors file's bytes (never pickle). Raises StorageError on anything malformed."""
    from safetensors import safe_open
    from safetensors.numpy import load

    if not isinstance(data, (bytes, bytearray)) or len(data) < 16:
        raise StorageError(f"{source}: not a safetensors file (too short)")
    try:
        tensors = load(bytes(data))
        with tempfile.NamedTemporaryFile(suffix=".safetensors") as tmp:
            tmp.write(data)
            tmp.flush()
            with safe_open(tmp.name, framework="numpy") as f:
                md = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types on bad headers
        raise StorageError(f"{source}: not a valid safetensors file ({exc})") from exc
    if META_KEY not in md:
        raise StorageError(f"{source}: a safetensors file, but not a steering-explorer directions file (no provenance)")
    try:
        doc = json.loads(md[META_KEY])
    except json.JSONDecodeError as exc:
        raise StorageError(f"{source}: provenance metadata is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise StorageError(f"{source}: provenance metadata is not a JSON object")
    if doc.get("format") != FORMAT:
        raise StorageError(f"{source}: unsupported format {doc.get('format')!r}; expected {FORMAT}")
    entries = doc.get("directions") or {}
    if not isinstance(entries, dict) or not all(isinstance(m, dict) for m in entries.values()):
        raise StorageError(f"{source}: the directions metadata is malformed (expected an object per direction)")
    dirs: dict[str, DirectionSet] = {}
    shape = None
    for name, m in entries.items():
        key = f"{name}/vectors"
        if key not in tensors:
            raise StorageError(f"{source}: direction {name!r} has no vectors")
        v = _as_float32(tensors[key])
        if v.ndim != 2 or (shape is not None and v.shape != shape):
            raise StorageError(f"{source}: direction {name!r} has shape {v.shape}, expected (L+1, d) like the others")
        shape = v.shape
        if not np.isfinite(v).all():
            raise StorageError(f"{source}: direction {name!r} contains NaN or inf")
        centroids = {k: tensors.get(f"{name}/{k}") for k in ("pos_centroid", "neg_centroid")}
        centroids = {k: None if c is None else _as_float32(c) for k, c in centroids.items()}
        for k, c in centroids.items():
            if c is not None and (c.shape != v.shape or not np.isfinite(c).all()):
                raise StorageError(
                    f"{source}: direction {name!r} has a {k} of shape {c.shape} (or NaN/inf); expected {v.shape}"
                )
        try:
            dirs[name] = DirectionSet(
                name=name,
                vectors=v,
                position=str(m.get("position", "t_inst")),
                n_pos=int(m.get("n_pos", 0)),
                n_neg=int(m.get("n_neg", 0)),
                normalized=bool(m.get("normalized", False)),
                meta=dict(m.get("meta") or {}),
                **centroids,
            )
        except (TypeError, ValueError) as exc:
            raise StorageError(f"{source}: direction {name!r} has malformed metadata ({exc})") from exc
    if not dirs:
        raise StorageError(f"{source}: the file holds no directions")
    return DirectionBundle(directions=dirs, provenance=doc.get("provenance") or {})


def _as_float32(a: np.ndarray) -> np.ndarray:
    """Stored float16 (or float64) comes back as float32; other dtypes are left for the checks to refuse."""
    if not np.issubdtype(a.dtype, np.floating) or a.dtype == np.float32:
        return a
    return a.astype(np.float32)


def load_bundle(path: str | os.PathLike, handle: Any = None, *, strict_weights: bool = False) -> DirectionBundle:
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"directions file not found: {path}")
    bundle = bundle_from_bytes(path.read_bytes(), source=str(path))
    if handle is not None:
        check_compatible(bundle, handle, strict_weights=strict_weights)
    return bundle


def check_compatible(bundle: DirectionBundle, handle: Any, *, strict_weights: bool = False) -> None:
    """Refuse directions computed for another model (depth, width, chat template; weights when strict)."""
    prov = bundle.provenance
    made_for = prov.get("model_id", "an unknown model")
    fix = f"recompute them with `python -m engine precompute --model {handle.spec.name}`"
    if bundle.n_rows != handle.n_rows or bundle.hidden_size != handle.hidden_size:
        raise StorageError(
            f"these directions are {bundle.n_rows} rows x {bundle.hidden_size} wide (made for {made_for}), but "
            f"{handle.model_id} has {handle.n_rows} rows (L+1) x {handle.hidden_size}; {fix}"
        )
    th = prov.get("template_hash")
    if th and th != handle.template_hash:
        raise StorageError(f"these directions were made with another chat template (made for {made_for}); {fix}")
    wh = prov.get("weights_hash")
    if strict_weights and wh and wh != handle.weights_hash:
        raise StorageError(f"these directions were made for other weights ({made_for}); {fix}")


def to_buffer(bundle: DirectionBundle, dtype: str = "float32") -> io.BytesIO:
    return io.BytesIO(bundle_to_bytes(bundle, dtype))
