"""Directions as llama.cpp control vectors (GGUF), written and read.

Layer mapping (written once, here, and tested):
- llama.cpp adds the tensor ``direction.k`` to the **output of decoder block k** (0-based), right after the block's
  last residual add (``cur = build_cvec(cur, il)`` before ``cb(cur, "l_out", il)`` in every model graph), at **every
  token position** (prompt and generated), scaled by the strength given on its command line. It never uses k = 0
  (its loader rejects ``direction.0``) and has tensors for k = 1 .. n_layer - 1.
- This project's captured row l is the residual stream at the **input** of block l, i.e. the output of block l - 1
  (see ``engine.capture.LAYER_CONVENTION``). Hence **row l <-> direction.(l - 1)**, ``LLAMACPP_ROW_OFFSET = 1``.
  Rows 2 .. L can be exported; row 0 (the embeddings) and row 1 (block 0's output) have no llama.cpp slot.
- Steering here at row l with positions ``all`` (every prompt and generated token) is what llama.cpp does with
  ``direction.(l-1)``; the app's default ``prompt`` positions (prefill only) have no llama.cpp equivalent.

File layout (what llama.cpp's ``common_control_vector_load`` and ``cvector-generator``/repeng use):
``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the model's architecture, e.g. ``qwen2``,
from ``config.model_type``), ``controlvector.layer_count`` (the number of ``direction.k`` tensors in the file, as
``cvector-generator`` and repeng write it; llama.cpp does not read it), and one 1-D float32 tensor ``direction.k``
per exported layer. This project adds ``steering_explorer.*`` keys (the model's block count ``n_layers``, the
direction's name, the coefficient, the model id), which llama.cpp ignores. The coefficient is baked into the vectors
(llama.cpp's ``--control-vector-scaled FILE:S``, ``FILE S`` on older builds, scales it again).

Reading accepts any such file (repeng's, ``cvector-generator``'s): duplicate ``direction.k`` tensors are summed, as
llama.cpp does; rows without a tensor are zero. The model's block count is, in order: the caller's ``n_layers``, the
file's ``steering_explorer.n_layers``, else the larger of ``max(k) + 1`` (the fewest blocks that hold every tensor;
exact for a full ``cvector-generator`` file, which has tensors 1 .. n_layer - 1) and ``layer_count`` (a tensor count
is never larger than max(k); a larger value can only be a block count). Pass the model's ``n_layers`` when importing
a file that leaves out the top layers. Writes are atomic (temp file + rename).

Also here: ``control_vector_bytes`` / ``read_control_vector_bytes`` (the same on bytes, for downloads and uploads),
``llamacpp_command`` (the ``llama-cli`` line for exported rows, in llama.cpp's layer numbers) and ``model_hint_for``
(``config.model_type`` of a loaded model).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .directions import DirectionSet

__all__ = [
    "ARCHITECTURE",
    "LLAMACPP_ROW_OFFSET",
    "META_PREFIX",
    "ControlVectorError",
    "control_vector_bytes",
    "exportable_rows",
    "llamacpp_command",
    "llamacpp_layer",
    "model_hint_for",
    "read_control_vector",
    "read_control_vector_bytes",
    "row_for_llamacpp_layer",
    "write_control_vector",
]

ARCHITECTURE = "controlvector"
LLAMACPP_ROW_OFFSET = 1
META_PREFIX = "steering_explorer"
_NAME = re.compile(r"^direction\.(\d+)$")


class ControlVectorError(ValueError):
    """A control vector cannot be written or read; the message says why and what to do."""


def exportable_rows(n_layers: int) -> list[int]:
    """Captured rows that have a llama.cpp slot: 2 .. L for a model of L blocks."""
    return list(range(1 + LLAMACPP_ROW_OFFSET, n_layers + 1))


def llamacpp_layer(row: int, n_layers: int) -> int:
    """llama.cpp's ``direction.k`` index for captured row ``row`` (k = row - 1)."""
    if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
        raise ControlVectorError(f"layer {row!r} is not an integer")
    k = int(row) - LLAMACPP_ROW_OFFSET
    if not 1 <= k <= n_layers - 1:
        raise ControlVectorError(
            f"row {row} cannot be a llama.cpp control vector layer: llama.cpp adds direction.k to the output of block k "
            f"for k = 1..{n_layers - 1}, i.e. this project's rows {1 + LLAMACPP_ROW_OFFSET}..{n_layers} (row l = input "
            "of block l); rows 0 and 1 have no slot"
        )
    return k


def row_for_llamacpp_layer(k: int, n_layers: int | None = None) -> int:
    """Captured row of llama.cpp's ``direction.k`` (row = k + 1)."""
    if k < 1 or (n_layers is not None and k > n_layers - 1):
        top = "" if n_layers is None else f"..{n_layers - 1}"
        raise ControlVectorError(f"direction.{k} is not a llama.cpp control vector layer (valid: 1{top})")
    return k + LLAMACPP_ROW_OFFSET


def model_hint_for(handle: object) -> str:
    """``controlvector.model_hint`` for a loaded model: its architecture (``config.model_type``, e.g. ``qwen2``, the
    name llama.cpp's converter uses for the same models); ``"unknown"`` when the model has none."""
    config = getattr(getattr(handle, "model", None), "config", None)
    hint = getattr(config, "model_type", None)
    return hint.strip() if isinstance(hint, str) and hint.strip() else "unknown"


def write_control_vector(
    path: str | os.PathLike[str],
    vectors: np.ndarray | DirectionSet,
    *,
    rows: Sequence[int] | None = None,
    coeff: float = 1.0,
    model_hint: str,
    n_layers: int | None = None,
    extra: Mapping[str, str | int | float] | None = None,
) -> Path:
    """Write ``coeff * vectors[row]`` for each row in ``rows`` (default: every exportable row) as a GGUF control vector.

    ``vectors`` is (L+1, d) (row l = input of block l) or a DirectionSet. ``extra`` values are written as
    ``steering_explorer.KEY`` (str, int or float); ``steering_explorer.n_layers`` is always written. Returns the path.
    """
    import gguf

    v = np.asarray(vectors.vectors if isinstance(vectors, DirectionSet) else vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 3:
        raise ControlVectorError(f"vectors must be (n_layers + 1, hidden) shaped with n_layers >= 2, got {v.shape}")
    L = v.shape[0] - 1 if n_layers is None else int(n_layers)
    if v.shape[0] != L + 1:
        raise ControlVectorError(f"vectors have {v.shape[0]} rows; a model with {L} blocks has {L + 1}")
    c = float(coeff)
    if not np.isfinite(c):
        raise ControlVectorError(f"coefficient must be finite, got {coeff}")
    chosen = exportable_rows(L) if rows is None else sorted({int(r) for r in rows})
    if not chosen:
        raise ControlVectorError("choose at least one layer to export")
    ks = [llamacpp_layer(r, L) for r in chosen]
    scaled = {k: c * v[r] for k, r in zip(ks, chosen, strict=True)}
    top = float(np.finfo(np.float32).max)
    if not all(np.isfinite(a).all() and np.abs(a).max() <= top for a in scaled.values()):
        raise ControlVectorError("the scaled vectors overflow float32; use a smaller coefficient")
    data = {k: a.astype(np.float32) for k, a in scaled.items()}
    if not isinstance(model_hint, str) or not model_hint.strip():
        raise ControlVectorError("model_hint must name the model's architecture (e.g. 'qwen2')")
    meta: dict[str, str | int | float] = {"n_layers": L, **(extra or {})}
    for key, value in meta.items():
        if not re.fullmatch(r"[a-z0-9_]+", key) or isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ControlVectorError(f"extra metadata {key!r}={value!r}: keys are [a-z0-9_], values str, int or float")
    out = Path(path)
    if out.is_dir():
        raise ControlVectorError(f"{out} is a folder; give a file name ending in .gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".cvec-", suffix=".gguf")
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, ARCHITECTURE)
        w.add_string(f"{ARCHITECTURE}.model_hint", model_hint.strip())
        w.add_uint32(f"{ARCHITECTURE}.layer_count", len(data))  # as cvector-generator and repeng: tensors in the file
        for key, value in meta.items():
            if isinstance(value, str):
                w.add_string(f"{META_PREFIX}.{key}", value)
            elif isinstance(value, int):
                w.add_int32(f"{META_PREFIX}.{key}", int(value))
            else:
                w.add_float32(f"{META_PREFIX}.{key}", float(value))
        for k in sorted(data):
            w.add_tensor(f"direction.{k}", data[k])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a control vector is a shareable artifact
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _field(reader: object, key: str) -> object | None:
    f = getattr(reader, "fields", {}).get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:  # an unreadable metadata value is treated as absent
        return None


def read_control_vector(
    path: str | os.PathLike[str],
    *,
    n_layers: int | None = None,
    hidden_size: int | None = None,
    name: str | None = None,
) -> DirectionSet:
    """Read a GGUF control vector as a DirectionSet of L+1 rows (row = k + 1; rows without a tensor are zero).

    ``n_layers`` / ``hidden_size`` (the model's) are checked when given; without ``n_layers`` the block count comes
    from the file (see the module docstring). ``meta`` holds ``header`` (the file's metadata: architecture,
    model_hint, layer_count and the ``steering_explorer.*`` keys), ``llamacpp_layers`` and ``rows``.
    """
    import gguf

    p = Path(path)
    if not p.exists():
        raise ControlVectorError(f"control vector file not found: {p}")
    if not p.is_file():  # a folder, FIFO or device: never opened (a FIFO would wait for a writer)
        raise ControlVectorError(f"{p}: not a regular file; give a .gguf control vector saved on disk")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as exc:
        raise ControlVectorError(f"{p} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    found: dict[int, np.ndarray] = {}
    width: int | None = None
    for t in reader.tensors:
        m = _NAME.match(t.name)
        if m is None:
            raise ControlVectorError(f"{p}: tensor {t.name!r} is not named direction.N; not a control vector")
        k = int(m.group(1))
        if k == 0:
            raise ControlVectorError(f"{p}: direction.0 is not a valid llama.cpp control vector layer")
        arr = np.asarray(t.data)
        if arr.dtype != np.float32 or arr.ndim != 1:
            raise ControlVectorError(f"{p}: {t.name} must be a 1-D float32 tensor, got {arr.dtype} {arr.shape}")
        if width is None:
            width = arr.shape[0]
        elif arr.shape[0] != width:
            raise ControlVectorError(f"{p}: {t.name} has {arr.shape[0]} values, other layers {width}")
        found[k] = found.get(k, np.zeros(width, dtype=np.float64)) + arr.astype(np.float64)
    if not found or width is None:
        raise ControlVectorError(f"{p}: no direction tensors")
    if hidden_size is not None and width != hidden_size:
        raise ControlVectorError(
            f"{p}: vectors have {width} values but the model's hidden size is {hidden_size}; it was made for another model"
        )
    header = _header(reader)
    file_layers = header.get("layer_count")
    ours = header.get(f"{META_PREFIX}.n_layers")
    if n_layers is not None:
        L = int(n_layers)
    elif isinstance(ours, int) and ours > max(found):
        L = ours
    else:  # layer_count is a tensor count (cvector-generator, repeng: <= max k) or, in older files, a block count
        L = max(max(found) + 1, file_layers if isinstance(file_layers, int) else 0)
    if max(found) > L - 1:
        raise ControlVectorError(f"{p}: has direction.{max(found)} but the model has {L} blocks (valid: 1..{L - 1})")
    vectors = np.zeros((L + 1, width), dtype=np.float32)
    for k, arr in found.items():
        vectors[row_for_llamacpp_layer(k, L)] = arr.astype(np.float32)
    hint = header.get("model_hint")
    return DirectionSet(
        name=name or p.stem,
        vectors=vectors,
        position="control_vector",
        meta={
            "source": str(p),
            "model_hint": hint if isinstance(hint, str) else None,
            "header": header,
            "llamacpp_layers": sorted(found),
            "rows": sorted(row_for_llamacpp_layer(k, L) for k in found),
        },
    )


def _header(reader: object) -> dict[str, object]:
    """The file's scalar metadata: ``architecture``, ``model_hint``, ``layer_count`` and ``steering_explorer.*``."""
    out: dict[str, object] = {}
    for key in ("general.architecture", f"{ARCHITECTURE}.model_hint", f"{ARCHITECTURE}.layer_count"):
        value = _field(reader, key)
        if value is not None:
            out[key.split(".", 1)[1]] = value
    for key in getattr(reader, "fields", {}):
        if key.startswith(f"{META_PREFIX}."):
            value = _field(reader, key)
            if isinstance(value, (str, int, float)):
                out[key] = value
    return out


def control_vector_bytes(
    vectors: np.ndarray | DirectionSet,
    *,
    rows: Sequence[int] | None = None,
    coeff: float = 1.0,
    model_hint: str,
    n_layers: int | None = None,
    extra: Mapping[str, str | int | float] | None = None,
) -> bytes:
    """The bytes of :func:`write_control_vector`'s file (for a download); same arguments, no path."""
    with tempfile.TemporaryDirectory(prefix="cvec-") as tmp:
        path = write_control_vector(
            Path(tmp) / "cv.gguf",
            vectors,
            rows=rows,
            coeff=coeff,
            model_hint=model_hint,
            n_layers=n_layers,
            extra=extra,
        )
        return path.read_bytes()


def read_control_vector_bytes(
    data: bytes,
    *,
    source: str = "upload",
    n_layers: int | None = None,
    hidden_size: int | None = None,
    name: str | None = None,
) -> DirectionSet:
    """:func:`read_control_vector` on a file's bytes (an upload); errors name ``source``."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise ControlVectorError(f"{source}: empty file")
    with tempfile.TemporaryDirectory(prefix="cvec-") as tmp:
        path = Path(tmp) / "upload.gguf"
        path.write_bytes(bytes(data))
        try:
            d = read_control_vector(path, n_layers=n_layers, hidden_size=hidden_size, name=name or Path(source).stem)
        except ControlVectorError as exc:
            raise ControlVectorError(str(exc).replace(str(path), source)) from None
        d.meta["source"] = source
        return d


def llamacpp_command(path: str, rows: Sequence[int], n_layers: int, *, model: str = "model.gguf") -> str:
    """The llama.cpp command line that applies the control vector at ``path`` exported for ``rows``.

    ``--control-vector`` applies the file at strength 1 (the coefficient is in the file); the layer range is in
    llama.cpp's numbering (k = row - 1), inclusive, as ``--control-vector-layer-range`` takes it."""
    ks = [llamacpp_layer(r, n_layers) for r in rows]
    if not ks:
        raise ControlVectorError("no layers")
    return f"llama-cli -m {model} --control-vector {path} --control-vector-layer-range {min(ks)} {max(ks)}"
