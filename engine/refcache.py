"""Disk cache of reference captures: the hidden states of a fixed prompt set, kept across server processes.

The Clusters and Inspect pages capture every labelled built-in prompt at (t_inst, t_post_inst), all L+1 rows: about
80 s for the default model on a laptop CPU. This module keeps that array in the user cache so that a new server
process reads it back in a second instead.

Contract:
- :func:`cache_key` is the identity of a capture, a dict of strings: ``schema`` (this file format), ``engine``
  (engine version), ``model_id``, ``weights`` (the handle's ``weights_hash``: the GGUF file's SHA-256 for registry
  and ``.gguf`` models, the seeded weights for ``tiny-random``, config + first weights file for local folders),
  ``template`` (the chat template's hash), ``data`` (SHA-256 of the records as canonical JSON: instructions and their
  labels, in order), ``dtype``, ``device`` (device type: kernels differ), ``positions`` and ``post_inst``. Any part
  that changes gives another file (the file name carries a hash of the whole key), so a stale capture is never read.
- :func:`cacheable` is False for Hugging Face hub ids: their ``weights_hash`` is a hash of the config only, which does
  not identify the weights (a new revision of the same id would reuse an old capture). They are captured every time.
- Files live in ``cache_dir()/references/<model>-<key hash 16>.safetensors`` (safetensors, no pickle): one tensor
  ``acts`` (n, P, L+1, d) and the key as JSON in the metadata. Stored as bfloat16 when that is exact (captures of a
  bfloat16 model are bfloat16 values widened to float32), else float32; always returned as float32 numpy.
- Writes are atomic (``engine.atomic.write_bytes``): a killed writer leaves the old file or none, never a torn one.
- Reads are tolerant: a file that cannot be parsed, whose metadata is not the expected key, whose tensor is missing,
  of another shape or dtype, or not finite is set aside (``<name>.corrupt-<timestamp>``) with one
  :class:`engine.atomic.CacheWarning`, and the capture is recomputed and written again.
- :func:`cached_capture` is the whole protocol: ``(acts, hit)``; ``compute`` is called only on a miss. A failure to
  write (full disk, read-only cache) is a warning, never an error: the computed array is still returned.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import atomic
from ._version import __version__
from .models import ModelHandle, cache_dir

__all__ = [
    "FOLDER",
    "SCHEMA",
    "cache_key",
    "cache_path",
    "cacheable",
    "cached_capture",
    "data_hash",
    "load",
    "save",
]

SCHEMA = "1"
FOLDER = "references"
_TENSOR = "acts"
_HUB_SOURCE = "Hugging Face hub"  # engine.models.loading sets this source for hub ids


def data_hash(records: Sequence[dict[str, Any]]) -> str:
    """SHA-256 of the records (instructions and labels, in order) as canonical JSON."""
    doc = json.dumps(list(records), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def cache_key(
    handle: ModelHandle, records: Sequence[dict[str, Any]], positions: Sequence[str | int], *, post_inst: bool = True
) -> dict[str, str]:
    """The identity of a capture of ``records`` at ``positions`` (see the module docstring)."""
    return {
        "schema": SCHEMA,
        "engine": __version__,
        "model_id": str(handle.model_id),
        "weights": str(handle.weights_hash),
        "template": str(handle.template_hash),
        "data": data_hash(records),
        "dtype": str(handle.dtype).replace("torch.", ""),
        "device": torch.device(handle.device).type,
        "positions": ",".join(str(p) for p in positions),
        "post_inst": str(bool(post_inst)),
    }


def _key_hash(key: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def cacheable(handle: ModelHandle) -> bool:
    """Whether captures of this model may be cached (not for hub ids: their hash does not identify the weights)."""
    return handle.source != _HUB_SOURCE


def cache_path(handle: ModelHandle, key: dict[str, str], root: Path | None = None) -> Path:
    """Where the capture with ``key`` is kept (``root`` defaults to ``cache_dir()/references``)."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in handle.spec.name)[-60:].lstrip(".") or "model"
    return (root or cache_dir() / FOLDER) / f"{stem}-{_key_hash(key)}.safetensors"


def save(path: Path, acts: np.ndarray, key: dict[str, str]) -> Path:
    """Write ``acts`` with ``key`` in the metadata, atomically (bfloat16 when exact, else float32)."""
    from safetensors.torch import save as st_save

    t = torch.from_numpy(np.ascontiguousarray(acts, dtype=np.float32))
    b = t.to(torch.bfloat16)
    if torch.equal(b.float(), t):
        t = b
    data = st_save({_TENSOR: t.contiguous()}, metadata={"key": json.dumps(key, sort_keys=True)})
    return atomic.write_bytes(path, data)


def load(path: Path, key: dict[str, str], shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array (float32) if ``path`` holds a valid capture for ``key`` of ``shape``; None when missing.
    A damaged or mismatched file is set aside with a warning, and None is returned (see the module docstring)."""
    from safetensors.torch import load as st_load

    if not path.exists():
        return None
    try:
        if not path.is_file():
            raise ValueError("not a regular file")
        raw = path.read_bytes()
        if len(raw) < 8:
            raise ValueError("truncated header")
        n = int.from_bytes(raw[:8], "little")
        if n <= 0 or 8 + n > len(raw):
            raise ValueError("truncated header")
        header = json.loads(raw[8 : 8 + n].decode("utf-8"))
        meta = header.get("__metadata__") or {}
        if json.loads(meta.get("key", "null")) != key:
            raise ValueError("its key does not match the file name's")
        tensors = st_load(raw)
        if set(tensors) != {_TENSOR}:
            raise ValueError(f"expected one tensor {_TENSOR!r}, found {sorted(tensors)}")
        t = tensors[_TENSOR]
        if t.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"unexpected dtype {t.dtype}")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"shape {tuple(t.shape)}, expected {tuple(shape)}")
        out = t.float().numpy()
        if not np.isfinite(out).all():
            raise ValueError("non-finite values")
    except Exception as exc:  # any failure to read a cache means: set it aside and recompute
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        atomic.set_aside(path, f"damaged reference capture ({type(exc).__name__}: {detail})")
        return None
    return out


def cached_capture(
    handle: ModelHandle,
    records: Sequence[dict[str, Any]],
    positions: Sequence[str | int],
    compute: Callable[[], np.ndarray],
    *,
    post_inst: bool = True,
    root: Path | None = None,
) -> tuple[np.ndarray, bool]:
    """``(acts, hit)``: the cached capture of ``records`` at ``positions``, else ``compute()`` (then saved)."""
    if not cacheable(handle):
        return compute(), False
    key = cache_key(handle, records, positions, post_inst=post_inst)
    try:
        path = cache_path(handle, key, root)
    except ValueError as exc:  # the cache folder cannot be created: compute without caching
        warnings.warn(f"reference captures are not cached: {exc}", atomic.CacheWarning, 2)
        return compute(), False
    shape = (len(records), len(positions), handle.n_rows, handle.hidden_size)
    acts = load(path, key, shape)
    if acts is not None:
        return acts, True
    acts = compute()
    if tuple(acts.shape) != shape:
        raise ValueError(f"capture returned shape {tuple(acts.shape)}, expected {shape}")
    try:
        save(path, acts, key)
    except OSError as exc:
        warnings.warn(
            f"could not write the reference capture cache {path} ({exc.strerror or exc}); it will be recomputed "
            "next time",
            atomic.CacheWarning,
            2,
        )
    return acts, False
