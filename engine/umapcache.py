"""UMAP's compiled code kept on disk: numba's cache switched on for umap-learn and pynndescent, in the user cache.

Why: the first UMAP map of a process spends ~23 s (2 cores) compiling umap's and pynndescent's numba functions; most
of them are declared without ``cache=True``, so every new server process compiled them again. Switched on here, a
process after the first one loads the machine code instead (measured on 2 cores: the warm-up fit and transform
24.4 s -> 3.7 s in a second process, ~0.1 s once ``transform``'s code is cached too; the fit of 576 x 896 states after
it ~1.1 s either way).

Contract:
- ``import_umap()`` imports ``umap`` once per process (thread-safe) and returns it. Unless
  ``STEERING_EXPLORER_UMAP_CACHE`` is ``0``, it first calls ``enable_numba_cache(<user cache>/numba)``; a cache that
  cannot be set up (folder not writable, numba changed) is one log line and UMAP runs uncached.
- ``enable_numba_cache(folder, prefixes)`` points every numba dispatcher defined at the top level of the loaded
  modules whose names start with ``prefixes`` and that has no cache of its own at ``folder``; returns how many.
  Dispatchers declared ``cache=True`` (most of pynndescent) keep numba's own place for them. Calling it again
  re-points them (tests).
- Numba keys an entry by the function's source file stamp, its signature and the CPU's features, so an upgraded
  package or another CPU compiles anew instead of loading stale code; numba writes each file through a temporary
  file and a rename, so a killed process leaves no half-written entry. Entries are numba's own format (pickle),
  read only from this user's cache folder, like numba's default ``__pycache__`` cache.
- ``run_with_recovery(fn)`` calls ``fn``; if it raises while the cache folder holds files (a damaged index or data
  file fails inside numba's loader), the folder is emptied with one warning and ``fn`` is called once more, so a
  damaged cache costs one recompilation, never a failed map. With no cached files the error propagates unchanged.
  (This module reads no cache file itself: numba does.)
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

__all__ = ["CACHE_ENV", "PREFIXES", "cache_folder", "enable_numba_cache", "import_umap", "run_with_recovery"]

log = logging.getLogger(__name__)

CACHE_ENV = "STEERING_EXPLORER_UMAP_CACHE"
PREFIXES: tuple[str, ...] = ("umap", "pynndescent")
SUBFOLDER = "numba"

T = TypeVar("T")

_lock = threading.Lock()
_umap: ModuleType | None = None
_folder: Path | None = None  # where enable_numba_cache last pointed the dispatchers (None: not enabled)


def _off() -> bool:
    return os.environ.get(CACHE_ENV, "1").strip().lower() in ("0", "false", "no", "off")


def cache_folder() -> Path | None:
    """The folder the dispatchers write to, or None when the cache is not on in this process."""
    return _folder


def enable_numba_cache(folder: Path, prefixes: Sequence[str] = PREFIXES) -> int:
    """Point the uncached numba dispatchers of the loaded modules named ``prefixes*`` at ``folder`` (see module
    docstring); how many were pointed there."""
    global _folder
    from numba.core import config as numba_config
    from numba.core.caching import FunctionCache
    from numba.core.registry import CPUDispatcher

    config: Any = numba_config  # CACHE_DIR is set at run time; typed loosely for mypy
    folder.mkdir(parents=True, exist_ok=True)
    before = config.CACHE_DIR
    config.CACHE_DIR = str(folder)  # numba's locator reads it when a cache is made, below
    n = 0
    try:
        for name, mod in list(sys.modules.items()):
            if mod is None or not name.startswith(tuple(prefixes)):
                continue
            for value in list(vars(mod).values()):
                if not isinstance(value, CPUDispatcher) or getattr(value, "__module__", None) != name:
                    continue
                cache = getattr(value, "_cache", None)
                own = isinstance(cache, FunctionCache) and not getattr(value, "_se_cache", False)
                if own:
                    continue  # declared cache=True by its package: numba's own place
                value.enable_caching()
                setattr(value, "_se_cache", True)  # noqa: B010 - numba's class declares no such attribute
                n += 1
    finally:
        config.CACHE_DIR = before
    _folder = folder
    return n


def import_umap() -> ModuleType:
    """``umap``, imported once per process, with the numba cache on (see module docstring)."""
    global _umap
    with _lock:
        if _umap is None:
            import umap  # heavy: numba, pynndescent, sklearn

            if not _off():
                try:
                    from .models.core import cache_dir

                    n = enable_numba_cache(cache_dir() / SUBFOLDER)
                    log.info("numba cache for UMAP on: %d functions, %s", n, _folder)
                except Exception as exc:  # a cache is an optimisation: say so once and run uncached
                    log.warning("UMAP runs without a numba cache (%s: %s)", type(exc).__name__, exc)
            _umap = umap
        return _umap


def run_with_recovery(fn: Callable[[], T]) -> T:
    """``fn()``; on an error while cached files exist, empty the cache folder (one warning) and call it once more."""
    try:
        return fn()
    except Exception as exc:
        folder = _folder
        if folder is None or not folder.is_dir() or not any(folder.iterdir()):
            raise
        log.warning(
            "UMAP failed with numba's cache in %s (%s: %s); emptied it and compiling again",
            folder,
            type(exc).__name__,
            exc,
        )
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return fn()
