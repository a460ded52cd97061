"""Saving and loading direction bundles: safetensors + JSON provenance. No pickle anywhere.

Contract:
- ``save_bundle(bundle, path, dtype="float32")`` writes ``path`` (``.safetensors``; tensors ``{name}/vectors``,
  ``{name}/pos_centroid``, ``{name}/neg_centroid``) with the provenance JSON embedded in the safetensors metadata
  and also written beside it as ``path.with_suffix('.json')``. Writes are atomic (temp file + rename).
- ``dtype="float16"`` halves the file (used for the shipped assets): every value is rounded to the nearest float16,
  so each layer's vector keeps a relative L2 error of at most ``FLOAT16_REL_ERROR`` = 2^-11 (about 4.9e-4; values
  under 6.1e-5 are subnormal and add at most 2^-25 absolute each). A value beyond float16's range (65504) is a
  :class:`StorageError`. Loading always returns float32 arrays, whatever the file stores.
- ``load_bundle(path, handle=None)`` reads it back; with a handle, a file made for another model fails with
  :class:`StorageError` that says what to do (``check_compatible``): another depth or width, another chat template,
  or a provenance that names other weights (``weights_hash``; when either side has no weights hash, another
  ``model_id``). Same weights under another name are accepted. ``allow_other_model=True`` accepts directions of
  the right shape made for another model (the caller's explicit choice); shape and template are always checked.
- Reading is strict about types, so a hand-edited or hostile file fails with one :class:`StorageError` line,
  never an AttributeError: the metadata and ``provenance`` must be JSON objects, the provenance fields the engine
  reads must have their types (``model_id``/``weights_hash``/``template_hash`` strings, ``n_layers``/``hidden_size``
  integers, ``data``/``positions``/``summary`` objects, ``data.harmful``/``data.harmless`` lists of objects, ...),
  and each direction's ``position`` a string, ``n_pos``/``n_neg`` non-negative integers, ``normalized`` a boolean,
  ``meta`` an object.
- Values: NaN/inf are refused, and so is a direction whose vectors are all zero or a centroid with an all-zero row
  (they would make every score 0, i.e. every prompt 'harmful' at threshold 0).
- Files: only regular files are read (a FIFO or device is refused, not waited on), at most ``MAX_BUNDLE_BYTES``.
  ``save_bundle`` refuses a folder where the file should go (``--out DIR`` must not write ``DIR.safetensors``
  beside it); ``bundle_path(out_dir, name)`` is the file for a user-given stem (no folder parts, no ``..``).
- Provenance: model id, weights hash, chat-template hash, layer convention, positions, data sets (names, hashes,
  counts), normalisation, date, engine version.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic
from ._version import __version__
from .capture import LAYER_CONVENTION
from .directions import DirectionBundle, DirectionSet

__all__ = [
    "FLOAT16_REL_ERROR",
    "FORMAT",
    "MAX_BUNDLE_BYTES",
    "STORAGE_DTYPES",
    "StorageError",
    "bundle_from_bytes",
    "bundle_path",
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
MAX_BUNDLE_BYTES = 1 << 30  # 1 GiB: far above any real bundle (a 70B model's is a few hundred MB)


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
    """Write ``path`` (suffix made ``.safetensors``) and its JSON sidecar, atomically. A folder is refused."""
    text = os.fspath(path)
    target = Path(text)
    if text.endswith(("/", os.sep)) or target.is_dir():  # else `--out DIR` would write DIR.safetensors beside it
        raise StorageError(f"{text} is a folder; give a file name in it, e.g. {target / 'directions.safetensors'}")
    if target.suffix != ".safetensors":
        target = target.with_suffix(".safetensors")
    for p in (target, target.with_suffix(".json")):
        if p.is_dir():
            raise StorageError(f"{p} is a folder; give another file name")
    data = bundle_to_bytes(bundle, dtype)
    atomic.write_bytes(target, data)  # creates the folder (an OSError names the path when it cannot)
    side = {"format": FORMAT, "storage_dtype": dtype, "provenance": bundle.provenance, "summary": bundle.summary()}
    atomic.write_bytes(target.with_suffix(".json"), json.dumps(side, indent=1, default=str).encode())
    return target


def bundle_path(out_dir: str | os.PathLike, name: str) -> Path:
    """``out_dir/<name>.safetensors`` for a user-given ``name`` (a plain file stem); checks that ``out_dir`` is a
    writable folder or can be created as one, creating nothing. StorageError (one line) otherwise."""
    try:
        stem = atomic.safe_stem(name)
        out = atomic.check_writable_dir(out_dir)
    except ValueError as exc:
        raise StorageError(str(exc)) from None
    return out / f"{stem}.safetensors"


def _metadata(data: bytes) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file (header: 8-byte little-endian length, then JSON)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"))
    md = header.get("__metadata__") if isinstance(header, dict) else None
    return md if isinstance(md, dict) else {}


_PROV_TYPES: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "engine_version": (str,),
    "created": (str,),
    "layer_convention": (str,),
    "model_id": (str,),
    "weights_hash": (str,),
    "template_hash": (str,),
    "n_layers": (int,),
    "hidden_size": (int,),
    "positions": (dict,),
    "data": (dict,),
    "clusters": (dict,),
    "summary": (dict,),
    "cluster_fallback": (list,),
    "normalized_directions": (bool,),
}
_DATA_TYPES: dict[str, tuple[type, ...]] = {
    "harmful": (list,),
    "harmless": (list,),
    "normalized_instructions": (bool,),
    "labeller": (str,),
    "label_max_new_tokens": (int,),
}
_JSON_TYPE = {str: "a string", int: "an integer", dict: "an object", list: "a list", bool: "true or false"}


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__
    )


def _check_fields(obj: dict[str, Any], types: dict[str, tuple[type, ...]], where: str, source: str) -> None:
    for key, allowed in types.items():
        v = obj.get(key)
        if v is None:
            continue
        ok = isinstance(v, allowed) and not (isinstance(v, bool) and bool not in allowed)
        if not ok:
            raise StorageError(
                f"{source}: {where}{key!r} must be {_JSON_TYPE[allowed[0]]}, not {_type_name(v)}; "
                "the file is damaged or hand-edited: recompute it with `python -m engine precompute`"
            )


def _check_provenance(prov: Any, source: str) -> dict[str, Any]:
    """The provenance object, with the types of the fields the engine reads checked (see the module docstring)."""
    if prov is None:
        return {}
    if not isinstance(prov, dict):
        raise StorageError(
            f"{source}: 'provenance' must be a JSON object, not {_type_name(prov)}; the file is damaged or "
            "hand-edited: recompute it with `python -m engine precompute`"
        )
    _check_fields(prov, _PROV_TYPES, "provenance field ", source)
    data = prov.get("data")
    if isinstance(data, dict):
        _check_fields(data, _DATA_TYPES, "provenance field data.", source)
        for side in ("harmful", "harmless"):
            if not all(isinstance(d, dict) for d in data.get(side) or []):
                raise StorageError(f"{source}: provenance field data.{side!r} must be a list of objects")
    return prov


def _check_direction_meta(name: str, m: dict[str, Any], source: str) -> None:
    where = f"direction {name!r} has malformed metadata: "
    _check_fields(m, {"position": (str,), "normalized": (bool,), "meta": (dict,)}, where, source)
    for k in ("n_pos", "n_neg"):
        v = m.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise StorageError(f"{source}: {where}{k!r} must be a non-negative integer, not {v!r}")


def _check_nonzero(name: str, v: np.ndarray, centroids: dict[str, np.ndarray | None], source: str) -> None:
    if v.size and not v.any():
        raise StorageError(
            f"{source}: direction {name!r} is all zeros, which would score every prompt the same (every prompt "
            "'harmful' at threshold 0); recompute the directions"
        )
    for k, c in centroids.items():
        if c is None:
            continue
        zero = np.flatnonzero(~c.any(axis=1))
        if zero.size:
            raise StorageError(
                f"{source}: direction {name!r} has a {k} whose row {int(zero[0])} is all zeros (a mean hidden state "
                "is never zero), so every score at that layer would be 0; recompute the directions"
            )


def bundle_from_bytes(data: bytes, *, source: str = "upload") -> DirectionBundle:
    """Parse a safetensors file's bytes (never pickle). Raises StorageError on anything malformed."""
    from safetensors.numpy import load

    if not isinstance(data, (bytes, bytearray)) or len(data) < 16:
        raise StorageError(f"{source}: not a safetensors file (too short)")
    try:
        tensors = load(bytes(data))
        md = _metadata(data)
    except Exception as exc:  # safetensors raises several types on bad headers
        raise StorageError(f"{source}: not a valid safetensors file ({exc})") from exc
    if META_KEY not in md:
        raise StorageError(f"{source}: a safetensors file, but not a steering-explorer directions file (no provenance)")
    try:
        doc = json.loads(md[META_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise StorageError(f"{source}: provenance metadata is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise StorageError(f"{source}: provenance metadata is not a JSON object")
    if doc.get("format") != FORMAT:
        raise StorageError(f"{source}: unsupported format {doc.get('format')!r}; expected {FORMAT}")
    provenance = _check_provenance(doc.get("provenance"), source)
    entries = doc.get("directions") or {}
    if not isinstance(entries, dict) or not all(isinstance(m, dict) for m in entries.values()):
        raise StorageError(f"{source}: the directions metadata is malformed (expected an object per direction)")
    dirs: dict[str, DirectionSet] = {}
    shape = None
    for name, m in entries.items():
        _check_direction_meta(name, m, source)
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
        _check_nonzero(name, v, centroids, source)
        try:
            dirs[name] = DirectionSet(
                name=name,
                vectors=v,
                position=str(m.get("position", "t_inst")),
                n_pos=int(m.get("n_pos") or 0),
                n_neg=int(m.get("n_neg") or 0),
                normalized=bool(m.get("normalized", False)),
                meta=dict(m.get("meta") or {}),
                **centroids,
            )
        except (TypeError, ValueError) as exc:
            raise StorageError(f"{source}: direction {name!r} has malformed metadata ({exc})") from exc
    if not dirs:
        raise StorageError(f"{source}: the file holds no directions")
    return DirectionBundle(directions=dirs, provenance=provenance)


def _as_float32(a: np.ndarray) -> np.ndarray:
    """Stored float16 (or float64) comes back as float32; other dtypes are left for the checks to refuse."""
    if not np.issubdtype(a.dtype, np.floating) or a.dtype == np.float32:
        return a
    return a.astype(np.float32)


def load_bundle(path: str | os.PathLike, handle: Any = None, *, allow_other_model: bool = False) -> DirectionBundle:
    """Read a directions file; with ``handle``, refuse one made for another model (see :func:`check_compatible`)."""
    try:
        data = atomic.read_regular_file(path, MAX_BUNDLE_BYTES, what="directions file")
    except ValueError as exc:
        raise StorageError(str(exc)) from None
    bundle = bundle_from_bytes(data, source=str(path))
    if handle is not None:
        check_compatible(bundle, handle, allow_other_model=allow_other_model)
    return bundle


def check_compatible(bundle: DirectionBundle, handle: Any, *, allow_other_model: bool = False) -> None:
    """Refuse directions computed for another model: another depth or width or chat template always; other weights
    (or, without weights hashes, another model id) unless ``allow_other_model``."""
    prov = _check_provenance(bundle.provenance, "these directions")
    made_for = prov.get("model_id") or "an unknown model"
    fix = f"recompute them with `python -m engine precompute --model {handle.spec.name}`"
    if bundle.n_rows != handle.n_rows or bundle.hidden_size != handle.hidden_size:
        raise StorageError(
            f"these directions are {bundle.n_rows} rows x {bundle.hidden_size} wide (made for {made_for}), but "
            f"{handle.model_id} has {handle.n_rows} rows (L+1) x {handle.hidden_size}; {fix}"
        )
    th = prov.get("template_hash")
    if th and th != handle.template_hash:
        raise StorageError(f"these directions were made with another chat template (made for {made_for}); {fix}")
    if allow_other_model:
        return
    wh, mid = prov.get("weights_hash"), prov.get("model_id")
    if wh and handle.weights_hash:
        other = wh != handle.weights_hash
        what = f"{made_for}, weights {wh}" if mid else f"weights {wh}"
    else:
        other = bool(mid) and mid != handle.model_id
        what = str(made_for)
    if other:
        raise StorageError(
            f"these directions were made for another model ({what}), not {handle.model_id} (weights "
            f"{handle.weights_hash}); {fix}, or allow other models explicitly (--allow-other-model; "
            "allow_other_model=True in Python) if you know they fit"
        )


def to_buffer(bundle: DirectionBundle, dtype: str = "float32") -> io.BytesIO:
    return io.BytesIO(bundle_to_bytes(bundle, dtype))
